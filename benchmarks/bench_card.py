"""The PiCo 1B model card end to end: train -> evaluate -> export -> load back; prints figures.

Trains a preset (default ``1b``: 1.46B parameters, Qwen2 tokenizer, context 2048) on the
embedded Shakespeare corpus, evaluates the last checkpoint with lm-eval on a local
multiple-choice task built here from the corpus (complete a line: its true second half against
three other lines' second halves; these lines were seen in training, so this measures fit, not
generalisation) and reads its held-out perplexity, exports fp16 safetensors + a GGUF, loads both
back through transformers and compares them with our model on the same prompt. Prints one JSON
summary (also written to ``--out``/summary.json with the model card and benchmarks.json).

    python benchmarks/bench_card.py --steps 200 --out /tmp/card          # a GPU
    python benchmarks/bench_card.py --preset demo --steps 20 --batch 8 --seq-len 128 \
        --set data.tokenizer=qwen2 --set model.vocab_size=151936           # a CPU smoke run

Time per step is the median over steps after the first 5 of (tokens per step / the logged
tokens per second); MFU uses model.training_flops_per_token against 989 TFLOP/s (H100/H200
dense bf16).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from pico_format import RunPaths, latest_step
from pico_train.checkpoint import load_model
from pico_train.config import load_config
from pico_train.corpus import shakespeare_texts
from pico_train.export import export_checkpoint
from pico_train.harness import evaluate_checkpoints, format_table
from pico_train.model import training_flops_per_token
from pico_train.train import train

PEAK_BF16 = 989e12
PROMPT = "ROMEO. But soft, what light through yonder window"


def shakespeare_task(folder: Path, n: int = 100, seed: int = 0) -> str:
    """A task YAML + JSON: complete a verse line (4 choices); returns the task name."""
    lines = [
        line.strip()
        for text in shakespeare_texts()
        for line in text.splitlines()
        if len(line.split()) >= 8 and not line.strip().isupper()
    ]
    rng = random.Random(seed)
    picked = rng.sample(lines, 4 * n)
    docs = []
    for i in range(n):
        words = [line.split() for line in picked[4 * i : 4 * i + 4]]
        half = len(words[0]) // 2
        endings = [" ".join(w[len(w) // 2 :]) for w in words]
        order = rng.sample(range(4), 4)
        docs.append(
            {
                "context": " ".join(words[0][:half]),
                "choices": [endings[j] for j in order],
                "answer": order.index(0),
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shakespeare_lines.json").write_text(json.dumps(docs))
    (folder / "shakespeare_lines.yaml").write_text(
        "task: shakespeare_lines\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'shakespeare_lines.json'}\ntest_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"
    )
    return "shakespeare_lines"


def step_times(run: RunPaths, tokens_per_step: int) -> list[float]:
    records = [json.loads(line) for line in run.log.read_text().splitlines() if line.strip()]
    return [
        tokens_per_step / r["tokens_per_s"]
        for r in records
        if r.get("tokens_per_s") and r["step"] > 5
    ]


def compare_exports(ckpt_root: Path, out: Path, device: str, gguf_too: bool) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    ours = load_model(ckpt_root).eval()
    with torch.no_grad():
        reference = ours(ids)
    scale = reference.abs().max()
    result = {}
    t = time.perf_counter()
    fp16 = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float16).to(device).eval()
    with torch.no_grad():
        logits = fp16(ids.to(device)).logits.float().cpu()
    result["fp16_load_s"] = time.perf_counter() - t
    result["fp16_rel_logit_error"] = ((logits - reference).abs().max() / scale).item()
    del fp16
    if not gguf_too:
        return result
    (gguf_file,) = [p.name for p in out.glob("*.gguf")]
    t = time.perf_counter()
    gguf = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gguf_file).eval()
    result["gguf_load_s"] = time.perf_counter() - t
    with torch.no_grad():
        logits = gguf(ids).logits
    result["gguf_rel_logit_error"] = ((logits - reference).abs().max() / scale).item()
    greedy = ours.generate(ids, 16, temperature=0.0)[0].tolist()
    theirs = gguf.generate(ids, max_new_tokens=16, do_sample=False)[0].tolist()
    result["gguf_greedy_equal_16"] = greedy == theirs
    result["greedy_text"] = tokenizer.decode(greedy[ids.shape[1] :])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="1b")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--gguf", default="q8_0")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--skip-gguf-check",
        action="store_true",
        help="do not load the GGUF back (transformers' GGUF loader dequantizes on the CPU: slow)",
    )
    p.add_argument("--run-dir", type=Path, default=Path("/tmp/pico-card/run"))
    p.add_argument("--out", type=Path, default=Path("/tmp/pico-card/out"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    shutil.rmtree(a.run_dir, ignore_errors=True)
    config = load_config(
        None,
        [
            f"run_dir={a.run_dir}",
            f"data.seq_len={a.seq_len}",
            "data.eval_sequences=16",
            f"training.max_steps={a.steps}",
            f"training.global_batch_size={a.batch}",
            f"training.micro_batch_size={a.micro_batch}",
            f"training.lr={a.lr}",
            f"training.warmup_steps={max(1, a.steps // 10)}",
            f"training.compile={str(a.compile).lower()}",
            "checkpointing.every=0",
            "checkpointing.steps=[]",
            "checkpointing.keep_states=1",
            "capture.enabled=false",
            "evaluation.batch_size=8",
            "logging.progress=false",
            *a.overrides,
        ],
        preset=a.preset,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    summary: dict = {"preset": a.preset, "tokenizer": config.data.tokenizer, "device": device}
    if device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name()
    t = time.perf_counter()
    result = train(config)
    summary["train_wall_s"] = time.perf_counter() - t
    run = RunPaths(a.run_dir)
    tokens_per_step = a.batch * config.seq_len
    times = step_times(run, tokens_per_step)
    per_step = statistics.median(times)
    flops = training_flops_per_token(config.model, config.seq_len)
    summary.update(
        steps=result.steps,
        tokens_seen=result.steps * tokens_per_step,
        step_s_median=per_step,
        tokens_per_s=tokens_per_step / per_step,
        mfu=flops * tokens_per_step / per_step / PEAK_BF16,
        loss_first=result.first_loss,
        loss_last=result.last_loss,
        heldout=result.eval,
    )
    print(json.dumps({"trained": summary}), flush=True)

    task = shakespeare_task(a.run_dir / "tasks")
    t = time.perf_counter()
    evals = evaluate_checkpoints(
        run.root,
        tasks=[task],
        include_path=[str(a.run_dir / "tasks")],
        batch_size=16,
        device=device,
    )
    summary["eval_s"] = time.perf_counter() - t
    summary["benchmarks"] = evals[0].benchmarks["tasks"]
    print(format_table(evals), flush=True)

    shutil.rmtree(a.out / "export", ignore_errors=True)
    t = time.perf_counter()
    export = export_checkpoint(run.root, a.out / "export", dtype="fp16", gguf=a.gguf)
    summary["export_s"] = time.perf_counter() - t
    print(json.dumps({"exported_s": summary["export_s"]}), flush=True)
    summary["export_files_mb"] = {
        f: round((export.out / f).stat().st_size / 2**20, 1) for f in export.files
    }
    ckpt = run.checkpoint(latest_step(run))
    summary.update(compare_exports(ckpt.root, export.out, device, not a.skip_gguf_check))
    for name in ("README.md",):
        shutil.copy(export.out / name, a.out / "model_card.md")
    shutil.copy(ckpt.benchmarks, a.out / "benchmarks.json")
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
