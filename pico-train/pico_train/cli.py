"""The `pico-train` command: info, train, sweep, generate.

Reads YAML configs, overrides, presets, run directories and checkpoint folders; prints summaries
or writes runs (through train.py). Errors the user can fix are printed as one clear message.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pico_format import (
    CaptureReader,
    CheckpointPaths,
    RunFormatError,
    RunPaths,
    capture_splits,
    latest_step,
    list_checkpoints,
    read_json,
)
from pico_format.benchmarks import benchmark_rows, read_benchmarks
from pico_format.command_line import OneLineErrors
from pico_format.yaml_file import dump_yaml
from pico_train import __version__
from pico_train.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    RunConfig,
    load_config,
    parse_override,
)
from pico_train.model import parameter_counts, training_flops_per_token


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _fmt(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe_model(model: ModelConfig, seq_len: int) -> str:
    counts = parameter_counts(model)
    flops = training_flops_per_token(model, seq_len)
    lines = [
        f"  layers {model.n_layers}, d_model {model.d_model}, heads {model.n_heads} "
        f"(kv {model.n_kv_heads}, head_dim {model.head_dim}), SwiGLU hidden {model.mlp_hidden}",
        f"  vocab {model.vocab_size}, context {model.max_seq_len}, "
        f"rope_theta {model.rope_theta:g}, init {model.init} (std {model.init_std})",
        f"  parameters: {counts['total']:,} total ({_fmt(counts['total'])}), "
        f"{counts['non_embedding']:,} without embeddings ({_fmt(counts['non_embedding'])})",
        f"  training FLOPs/token at context {seq_len}: {flops:,} ({_fmt(flops)}); "
        f"per 1B tokens: {flops * 1e9:.3e}",
    ]
    return "\n".join(lines)


def describe_memory(config: RunConfig, gpus: int, gpu_memory_gib: float | None) -> str:
    """Estimated memory per GPU under DDP and FSDP2, and what training.parallelism=auto picks."""
    import torch

    from pico_train.parallelize import (
        COMFORTABLE,
        choose_parallelism,
        memory_per_gpu,
        recomputed_blocks,
    )

    if gpu_memory_gib is None:
        local = torch.cuda.is_available()
        gpu_memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if local else 80
    training = config.training
    recomputed = recomputed_blocks(training, config.model.n_layers)
    need = memory_per_gpu(
        config.model,
        config.seq_len,
        training.micro_batch_size,
        gpus,
        recomputed,
    )
    pick = choose_parallelism(config, gpus, gpu_memory_gib * 2**30)
    reason = {
        "single": "one process",
        "ddp": f"DDP fits in {COMFORTABLE:.0%} of {gpu_memory_gib:g} GiB",
        "fsdp": f"DDP does not fit in {COMFORTABLE:.0%} of {gpu_memory_gib:g} GiB",
    }[pick]
    if training.parallelism != "auto" and gpus > 1:
        reason = f"training.parallelism={training.parallelism}"
    lines = [
        f"  memory per GPU on {gpus} GPU(s), micro-batch {training.micro_batch_size} x "
        f"{config.seq_len}, AdamW, bf16 compute, {recomputed} of {config.model.n_layers} "
        "blocks recomputed (estimate):",
        f"    DDP  {need['ddp'] / 2**30:7.1f} GiB",
        f"    FSDP {need['fsdp'] / 2**30:7.1f} GiB",
        f"  training.parallelism=auto picks: {pick} ({reason})",
    ]
    mode = "fsdp" if pick == "fsdp" else "ddp"
    if need[mode] > FITS * gpu_memory_gib * 2**30:
        lines.append(_fit_hint(config, gpus, gpu_memory_gib, mode, recomputed))
    return "\n".join(lines)


FITS = 0.9  # an estimate above this share of a GPU's memory is reported as not fitting


def _fit_hint(config: RunConfig, gpus: int, gpu_memory_gib: float, mode: str, now: int) -> str:
    """How to fit a run whose estimate exceeds FITS of the GPU: the fewest blocks to recompute
    (training.activation_checkpointing), else more GPUs or a smaller micro-batch."""
    from pico_train.parallelize import memory_per_gpu

    training, layers = config.training, config.model.n_layers
    limit = FITS * gpu_memory_gib * 2**30
    more = "more GPUs" if mode == "fsdp" else "more GPUs with FSDP"
    for blocks in range(now + 1, layers + 1):
        need = memory_per_gpu(config.model, config.seq_len, training.micro_batch_size, gpus, blocks)
        if need[mode] <= limit:
            return (
                f"  does not fit {FITS:.0%} of {gpu_memory_gib:g} GiB: --set "
                f"training.activation_checkpointing={blocks} (estimate "
                f"{need[mode] / 2**30:.1f} GiB), or {more}"
            )
    return (
        f"  does not fit {FITS:.0%} of {gpu_memory_gib:g} GiB even with every block recomputed:"
        f" use {more} or a smaller training.micro_batch_size"
    )


def describe_run(run: RunPaths) -> str:
    steps = list_checkpoints(run)
    if not steps:
        return f"{run.root}: no complete checkpoint yet."
    latest = latest_step(run)
    lines = [f"run {run.root}: {len(steps)} checkpoints, latest step {latest}"]
    for step in steps:
        ckpt = run.checkpoint(step)
        parts = ["model"]
        if ckpt.trainer.is_file():
            parts.append("state")
        if ckpt.eval.is_file():
            ev = read_json(ckpt.eval)
            if "eval_loss" in ev:
                parts.append(f"eval loss {ev['eval_loss']:.4f} ppl {ev['eval_perplexity']:.2f}")
        lines.append(f"  step {step}: " + ", ".join(parts))
        benchmarks = read_benchmarks(ckpt)
        if benchmarks is not None:
            scores = [
                f"{r['task']} {r['metric']} {r['value']:.3f}"
                + (f" +- {r['stderr']:.3f}" if r["stderr"] is not None else "")
                for r in benchmark_rows(benchmarks)
            ]
            limit = f", limit {benchmarks['limit']}" if benchmarks["limit"] is not None else ""
            lines.append(f"    benchmarks ({benchmarks['harness']}{limit}): " + "; ".join(scores))
        for split in capture_splits(ckpt):
            manifest = CaptureReader(ckpt, split).manifest
            kinds = ", ".join(f"{k} {len(v)}" for k, v in manifest.tensors.items())
            first = manifest.tensors.get("activations", {})
            shape = next(iter(first.values())).shape if first else None
            lines.append(
                f"    capture {split}: {manifest.batch_size} sequences x {manifest.seq_len} "
                f"tokens, positions {manifest.positions}, {len(manifest.modules)} modules "
                f"({kinds}); activation rows x width {shape} {manifest.activation_dtype}; "
                f"loss {manifest.loss:.4f}"
            )
    return "\n".join(lines)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pico-train")
def main() -> None:
    """Train pico-decoder language models with learning-dynamics checkpoints."""


def _run_paths(run_dir: Path) -> RunPaths:
    """An existing run directory, or a one-line error saying what the path is instead."""
    if not run_dir.exists():
        raise RunFormatError(f"no such run directory: '{run_dir}'.")
    run = RunPaths(run_dir)
    if not run_dir.is_dir() or not run.info.is_file():
        raise RunFormatError(f"'{run_dir}' is not a pico run directory (no {run.info.name}).")
    return run


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="A model preset.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="A YAML config.")
@click.option("--set", "overrides", multiple=True, help="Override: section.key=value.")
@click.option("--all-presets", is_flag=True, help="Describe every preset.")
@click.option("--gpus", type=click.IntRange(min=1), help="Estimate memory per GPU on N GPUs.")
@click.option(
    "--gpu-memory-gib",
    type=click.FloatRange(min=1),
    help="Memory of one GPU for --gpus (default: this machine's GPU, else 80).",
)
def info(run_dir, preset, config_path, overrides, all_presets, gpus, gpu_memory_gib) -> None:
    """Describe a preset/config (shape, parameters, FLOPs/token) or a run directory."""
    try:
        for text in overrides:
            parse_override(text)  # `--set key value` (a space for '=') fails here, by name
        if run_dir is not None:
            if preset or config_path or overrides or all_presets:
                raise ConfigError(
                    f"give either a run directory ('{run_dir}') or --preset/--config/--set, "
                    f"not both."
                )
            click.echo(describe_run(_run_paths(run_dir)))
            return
        if all_presets:
            for name, shape in PRESETS.items():
                click.echo(f"preset {name}:\n{describe_model(shape, shape.max_seq_len)}")
            return
        config: RunConfig = load_config(config_path, overrides, preset=preset)
        click.echo(
            f"preset {config.preset or '(custom)'}:\n{describe_model(config.model, config.seq_len)}"
        )
        if gpus is not None:
            click.echo(describe_memory(config, gpus, gpu_memory_gib))
    except (ConfigError, RunFormatError) as err:
        _fail(str(err))


@main.command("config")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="A YAML config.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="A model preset.")
@click.option("--set", "overrides", multiple=True, help="Override: section.key=value.")
def show_config(config_path, preset, overrides) -> None:
    """Print the full resolved config (every default filled in) as YAML."""
    try:
        config = load_config(config_path, overrides, preset=preset)
    except ConfigError as err:
        _fail(str(err))
    click.echo(dump_yaml(config.to_dict()), nl=False)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="A YAML config.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="A model preset.")
@click.option("--set", "overrides", multiple=True, help="Override: section.key=value.")
@click.option("--force", is_flag=True, help="Resume even if the model or data changed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
def train(config_path, preset, overrides, force, device) -> None:
    """Train, or resume the run in the config's run_dir."""
    from pico_train.data import DataError
    from pico_train.train import TrainingError
    from pico_train.train import train as run_training

    try:
        config = load_config(config_path, overrides, preset=preset)
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(
                    "--device cuda: CUDA is not available on this machine (torch "
                    f"{torch.__version__}); use --device cpu or --device auto."
                )
        result = run_training(config, force=force, device=None if device == "auto" else device)
    except (ConfigError, RunFormatError, DataError, TrainingError) as err:
        _fail(str(err))
    except OSError as err:  # e.g. a run_dir that cannot be created
        _fail(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        _report(result)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pico_train.distributed import end_worker

        end_worker(0)  # the process group is torn down and every file closed (train.train)


def _report(result) -> None:
    """The one-line summary of a finished training command."""
    ran = result.steps - result.start_step
    if ran > 0:
        ppl = result.eval.get("eval_perplexity")
        begun = f" (steps {result.start_step} -> {result.steps})" if result.start_step else ""
        click.echo(
            f"done: {ran} steps{begun} in {result.seconds:.1f}s; training loss "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}"
            + (f"; held-out perplexity {ppl:.2f}" if ppl is not None else "")
            + f"; run directory {result.run_dir}"
        )
    else:
        click.echo(f"nothing to do: {result.run_dir} already reached step {result.steps}.")


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="A YAML config.")
@click.option("--presets", required=True, help="Comma-separated presets, e.g. demo-w32,demo.")
@click.option("--set", "overrides", multiple=True, help="Override for every run: key=value.")
@click.option("--force", is_flag=True, help="Resume even if the data changed.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
def sweep(config_path, presets, overrides, force, device) -> None:
    """Train the config at each preset into RUN_DIR/<preset> (same data order and checkpoints)."""
    from pico_train.data import DataError
    from pico_train.sweep import compare_command, plan_sweep, run_sweep
    from pico_train.train import TrainingError

    try:
        plan = plan_sweep(config_path, presets, overrides)
        run_sweep(plan, force=force, device=None if device == "auto" else device, echo=click.echo)
    except (ConfigError, RunFormatError, DataError, TrainingError) as err:
        _fail(str(err))
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"sweep done: {len(plan.configs)} runs. Compare them with:")
        click.echo(f"  {compare_command(plan)}")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run directory (its latest checkpoint)."""
    if CheckpointPaths(path).model_config.is_file():
        return path
    run = RunPaths(path)
    step = latest_step(run) if run.latest.is_file() else None
    if step is None:
        raise RunFormatError(f"'{path}' is neither a checkpoint folder nor a run with checkpoints.")
    return run.checkpoint(step).root


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--prompt", default="", help="Text to continue.")
@click.option("--max-new-tokens", default=100, show_default=True)
@click.option("--temperature", default=0.8, show_default=True, help="0 = greedy.")
@click.option("--top-p", default=0.95, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-cache", is_flag=True, help="Re-encode the whole sequence each step.")
def generate(checkpoint, prompt, max_new_tokens, temperature, top_p, seed, no_cache) -> None:
    """Sample text from a checkpoint folder (or a run's latest checkpoint) with a KV cache."""
    import torch
    from transformers import AutoTokenizer

    from pico_train.checkpoint import load_model

    try:
        folder = resolve_checkpoint(checkpoint)
        model = load_model(folder).eval()
    except RunFormatError as err:
        _fail(str(err))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(prompt)["input_ids"] if prompt else []
    if not ids:
        start = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        ids = [start]
    room = model.config.max_seq_len - len(ids)
    if room <= 0:
        _fail(
            f"the prompt has {len(ids)} tokens; the model's context is {model.config.max_seq_len}."
        )
    generator = torch.Generator().manual_seed(seed)
    out = model.generate(
        torch.tensor([ids]),
        min(max_new_tokens, room),
        temperature=temperature,
        top_p=top_p,
        eos_token_id=tokenizer.eos_token_id,
        generator=generator,
        use_cache=not no_cache,
    )
    click.echo(tokenizer.decode(out[0].tolist(), skip_special_tokens=True))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--step", type=int, help="Which step of a run (default: the latest).")
@click.option("--dtype", default="fp16", show_default=True, help="fp16 | bf16 | fp32.")
@click.option("--gguf", "gguf_type", help="Also write a GGUF file: f16 | q8_0.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
def export(checkpoint, out, step, dtype, gguf_type, force) -> None:
    """Export a checkpoint (or a run's step) as safetensors + tokenizer (+ GGUF) + model card."""
    from pico_train.export import ExportError, export_checkpoint

    try:
        result = export_checkpoint(
            checkpoint,
            out,
            step=step,
            dtype=dtype,
            gguf=gguf_type,
            force=force,
            progress=True,
            log=lambda m: click.echo(m, err=True),
        )
    except ExportError as err:
        _fail(str(err))
    click.echo(
        f"exported step {result.step} ({result.dtype}) to {result.out}: " + ", ".join(result.files)
    )


@main.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--tasks", help="Comma-separated lm-eval task names (default: the model card's).")
@click.option("--steps", help="Comma-separated steps of a run, or 'all' (default: the latest).")
@click.option("--limit", type=int, help="At most N examples per task (quick looks).")
@click.option("--include-path", multiple=True, help="A folder of task YAML files (repeatable).")
@click.option("--num-fewshot", type=int, help="Override every task's number of shots.")
@click.option("--batch-size", default="8", show_default=True, help="Batch size, or 'auto'.")
@click.option("--device", help="cpu | cuda | cuda:N (default: cuda when available).")
@click.option("--allow-code-execution", is_flag=True, help="Allow humaneval (runs model code).")
def eval_(
    checkpoint,
    tasks,
    steps,
    limit,
    include_path,
    num_fewshot,
    batch_size,
    device,
    allow_code_execution,
) -> None:
    """Benchmark checkpoints with lm-eval; writes benchmarks.json into each and prints a table."""
    from pico_train.harness import HarnessError, evaluate_checkpoints, format_table

    try:
        chosen = None
        if steps is not None:
            chosen = "all" if steps == "all" else [int(s) for s in steps.split(",") if s.strip()]
        results = evaluate_checkpoints(
            checkpoint,
            tasks=None if tasks is None else [t.strip() for t in tasks.split(",") if t.strip()],
            steps=chosen,
            limit=limit,
            include_path=list(include_path),
            num_fewshot=num_fewshot,
            batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
            device=device,
            allow_code_execution=allow_code_execution,
            log=lambda m: click.echo(m, err=True),
        )
    except ValueError as err:
        _fail(f"--steps must be 'all' or comma-separated integers ({err}).")
    except HarnessError as err:
        _fail(str(err))
    click.echo(format_table(results))


if __name__ == "__main__":
    main()
