"""Parallelism from outside the model: FSDP2 and DDP over gloo equal one process, resume on a
different number of processes, a failing rank stops every rank, two torchrun "nodes"."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from pico_format import CaptureReader, RunPaths, latest_step
from pico_train.config import ConfigError, load_config
from pico_train.distributed import Dist, launch_command
from pico_train.model import PicoDecoder, parameter_counts
from pico_train.monitor import read_log
from pico_train.parallelize import (
    activation_checkpointing_paused,
    choose_parallelism,
    compile_mode,
    memory_per_gpu,
    parallelize,
    recomputed_blocks,
)
from pico_train.train import train

from tiny_runs import CPU_RANKS_ENV, TINY, run_process_group

# Four steps at a constant lr (so a run stopped at step 2 and resumed equals one of 4 steps),
# one sequence per micro-batch (FSDP's and DDP's no-sync path), a capture batch of one row: the
# second rank holds none of it (the shape that hung on GPUs).
SETTINGS = [
    *TINY,
    "training.max_steps=4",
    "training.schedule=constant",
    "training.warmup_steps=1",
    "training.micro_batch_size=1",
    "checkpointing.every=2",
    "checkpointing.steps=[]",
    "capture.batch_size=1",
    "distributed.timeout_s=60",
]


def _losses(run_dir):
    return torch.tensor([r["loss"] for r in read_log(RunPaths(run_dir).log) if "loss" in r])


def _assert_same_captures(ours, theirs, kinds, same_modules=False):
    """Both checkpoints' captured tensors of these kinds agree (fp32 reduction noise), split by
    split; same_modules: and both captured the same modules."""
    for split in ("train", "eval"):
        a, b = CaptureReader(ours, split), CaptureReader(theirs, split)
        for kind in kinds:
            if same_modules:
                assert a.modules(kind) == b.modules(kind)
            for module in b.modules(kind):
                torch.testing.assert_close(
                    a.get(kind, module), b.get(kind, module), rtol=1e-4, atol=1e-6
                )


def _cli_args(run_dir, *extra):
    return [a for o in [*SETTINGS, f"run_dir={run_dir}", *extra] for a in ("--set", o)]


def _run(cmd, timeout=240):
    proc = run_process_group(cmd, env=CPU_RANKS_ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, four uninterrupted steps."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(overrides=[*SETTINGS, f"run_dir={run_dir}"]), device="cpu")
    return run_dir


@pytest.mark.slow
def test_fsdp_on_two_ranks_equals_one_process_and_resumes_on_one(reference, tmp_path):
    run_dir = tmp_path / "fsdp"
    # Activation checkpointing recomputes exactly (fp32): it changes nothing either.
    extra = ["training.parallelism=fsdp", "training.activation_checkpointing=true"]
    args = _cli_args(run_dir, *extra, "training.max_steps=2")
    _run(launch_command(2, ["train", *args]))
    ref, run = RunPaths(reference), RunPaths(run_dir)
    # The checkpoint written under FSDP is the one-process checkpoint: same files, same values.
    ours, theirs = run.checkpoint(2), ref.checkpoint(2)
    for name in ("model_weights", "optimizer"):
        a, b = load_file(str(getattr(ours, name))), load_file(str(getattr(theirs, name)))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    for split in ("train", "eval"):
        assert CaptureReader(ours, split).manifest.token_ids == (
            CaptureReader(theirs, split).manifest.token_ids
        )
    _assert_same_captures(ours, theirs, ("activations", "weights", "gradients"))
    # Resume the 2-process FSDP run in one process: the loss curve continues unchanged.
    train(load_config(overrides=[*SETTINGS, f"run_dir={run_dir}"]), device="cpu")
    assert latest_step(run) == 4
    torch.testing.assert_close(_losses(run_dir), _losses(reference), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_one_process_run_resumes_on_two_ranks(reference, tmp_path, parallelism):
    """With the test above (FSDP writes the one-process checkpoint), fsdp here also covers an
    FSDP run resuming under FSDP: its checkpoint is this one."""
    run_dir = tmp_path / "grow"
    train(
        load_config(overrides=[*SETTINGS, f"run_dir={run_dir}", "training.max_steps=2"]),
        device="cpu",
    )
    _run(launch_command(2, ["train", *_cli_args(run_dir, f"training.parallelism={parallelism}")]))
    torch.testing.assert_close(_losses(run_dir), _losses(reference), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_compiled_on_two_ranks_equals_one_eager_process(reference, tmp_path, parallelism):
    """The GPU defaults (compiled; DDP, or FSDP2 with compiled blocks) on CPU: the same losses,
    gradient norms and captures as one eager process. (A capture whose forward has the
    training forward's shape, where a compiled block would skip the capture's hooks, is
    test_capture's compiled-blocks test.)"""
    run_dir = tmp_path / "compiled"
    extra = [f"training.parallelism={parallelism}", "training.compile=true"]
    _run(launch_command(2, ["train", *_cli_args(run_dir, *extra)]), timeout=600)

    def curve(run):
        rows = [r for r in read_log(RunPaths(run).log) if "loss" in r]
        return torch.tensor([[r["loss"], r["grad_norm"]] for r in rows])

    ours = curve(run_dir)
    assert (ours[:, 1] > 0).all()
    torch.testing.assert_close(ours, curve(reference), rtol=1e-5, atol=1e-6)
    ours, theirs = RunPaths(run_dir).checkpoint(4), RunPaths(reference).checkpoint(4)
    _assert_same_captures(ours, theirs, ("activations", "gradients"), same_modules=True)


FAULT = """
import os, sys, time
import pico_train.checkpoint as checkpoint
real = checkpoint.capture_learning_dynamics
def failing(*args, **kwargs):
    if os.environ["RANK"] == "1":
        if sys.argv[1] == "hang":
            time.sleep(3600)
        raise RuntimeError("injected failure inside a checkpoint")
    return real(*args, **kwargs)
del sys.argv[1]
checkpoint.capture_learning_dynamics = failing
from pico_train.cli import main
main()
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fault_command(tmp_path, fault, timeout_s):
    script = tmp_path / "fault.py"
    script.write_text(FAULT)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        fault,
        "train",
        *_cli_args(tmp_path / "run", f"distributed.timeout_s={timeout_s}"),
    ]


@pytest.mark.slow
def test_a_rank_failing_inside_a_checkpoint_stops_every_rank(tmp_path):
    cmd = _fault_command(tmp_path, "raise", 30)
    began = time.perf_counter()
    proc = run_process_group(cmd, env=CPU_RANKS_ENV, timeout=240)
    elapsed = time.perf_counter() - began
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # The error is printed once, by the rank it happened on; the other rank either sees its
    # collective fail and says it stopped, or is stopped first by torchrun (SIGTERM): which one
    # comes first is a race between gloo's broken connection and torchrun's monitor.
    assert output.count("RuntimeError: injected failure inside a checkpoint") == 1, output[-4000:]
    assert "happened on rank 1" in output, output[-4000:]
    assert "rank 0 stopped" in output or "Signal 15 (SIGTERM) received by PID" in output
    assert elapsed < 200  # bounded: start-up plus two steps (slow on a loaded CPU), not a hang
    assert latest_step(RunPaths(tmp_path / "run")) is None  # no half checkpoint published


@pytest.mark.slow
def test_a_rank_hanging_inside_a_checkpoint_times_out_the_others(tmp_path):
    """No rank waits forever: rank 1 never answers, rank 0's collective gives up after
    distributed.timeout_s and stops, and torchrun then stops rank 1."""
    began = time.perf_counter()
    proc = run_process_group(_fault_command(tmp_path, "hang", 5), env=CPU_RANKS_ENV, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rank 0 stopped: a collective failed" in output, output[-3000:]
    assert time.perf_counter() - began < 200


@pytest.mark.slow
def test_two_torchrun_nodes_equal_one_process(reference, tmp_path):
    port = _free_port()
    run_dir = tmp_path / "nodes"
    node = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=pico-test",
        "-m",
        "pico_train.cli",
        "train",
        *_cli_args(run_dir),
    ]
    # Both agents run in their own process group; whatever happens, every process of both
    # groups (the agents and their workers) is gone when the test ends.
    agents = [
        subprocess.Popen(
            node,
            env=CPU_RANKS_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [a.communicate(timeout=420) for a in agents]
    finally:
        for a in agents:
            try:
                os.killpg(a.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            a.wait()
    assert [a.returncode for a in agents] == [0, 0], [o[1][-2000:] for o in outputs]
    torch.testing.assert_close(_losses(run_dir), _losses(reference), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# In one process
# ----------------------------------------------------------------------------------------------


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node=2 on a one-GPU machine: every rank names the problem before
    anything is written (rank 1 used to die in torch.cuda.set_device with "invalid device
    ordinal", while rank 0 created the run directory and waited for it)."""
    from pico_train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set a device"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(ConfigError, match=r"2 processes on this machine, but it has 1 GPU"):
            distributed.setup()


def test_auto_choices():
    config = load_config(overrides=["preset=1b"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode(config.training, cpu, 1) == "eager"
    assert compile_mode(config.training, cuda, 1) == compile_mode(config.training, cuda, 2)
    assert compile_mode(config.training, cuda, 1) == "compiled"  # CUDA graphs: asked for only
    config.training.compile = "true"
    assert compile_mode(config.training, cpu, 1) == "compiled"
    config.training.compile = "false"
    assert compile_mode(config.training, cuda, 1) == "eager"
    assert choose_parallelism(config, 1, 80e9) == "single"
    assert choose_parallelism(config, 2, None) == "ddp"  # CPU processes
    assert choose_parallelism(config, 2, 141e9) == "ddp"  # 1b fits one H200 comfortably
    assert choose_parallelism(config, 2, 24e9) == "fsdp"  # not a 24 GB card
    config.training.parallelism = "fsdp"
    assert choose_parallelism(config, 2, 141e9) == "fsdp"


def test_cudagraphs_is_refused_where_it_cannot_run(tmp_path):
    config = load_config(overrides=[*TINY, "training.compile=cudagraphs", f"run_dir={tmp_path}"])
    assert compile_mode(config.training, torch.device("cuda"), 1) == "cudagraphs"
    with pytest.raises(ConfigError, match="one process only"):
        compile_mode(config.training, torch.device("cuda"), 2)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        train(config, device="cpu")  # refused before the run's files are written
    assert not RunPaths(tmp_path).info.exists()
    with pytest.raises(ConfigError, match="not one of auto, true, false, cudagraphs"):
        load_config(overrides=[*TINY, "training.compile=graphs"])


# cudagraph_mark_step_begin imports inductor modules that use torch.jit.script_method
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_kept_gradient_buffers_train_bit_for_bit_like_freed_ones(reference, tmp_path, monkeypatch):
    """What the loop does under CUDA graphs besides replaying them (a .grad buffer for every
    parameter before the first micro-batch, zeroed instead of freed after each step), here on
    CPU with 4 micro-batches per step: the reference run's losses and norms, bit for bit."""
    import pico_train.train as loop

    def with_graph_bookkeeping(*args, **kwargs):
        par = parallelize(*args, **kwargs)
        par.cuda_graphs = True  # the forward stays eager: only the bookkeeping is exercised
        return par

    monkeypatch.setattr(loop, "parallelize", with_graph_bookkeeping)
    run_dir = tmp_path / "run"
    train(load_config(overrides=[*SETTINGS, f"run_dir={run_dir}"]), device="cpu")
    for key in ("loss", "grad_norm"):
        ours, ref = (
            [r[key] for r in read_log(RunPaths(d).log) if key in r] for d in (run_dir, reference)
        )
        assert ours == ref and len(ours) == 4


def test_memory_estimate_orders_and_scales():
    m = load_config(overrides=["preset=1b"]).model
    one = memory_per_gpu(m, 2048, 8, 1, 0)
    four = memory_per_gpu(m, 2048, 8, 4, 0)
    n, body = 1_457_596_416, parameter_counts(m)["non_embedding"]
    # DDP replicates everything and adds its gradient buckets (fp32) over several GPUs
    assert four["ddp"] == one["ddp"] + 4 * n
    assert four["fsdp"] < one["fsdp"] and four["fsdp"] < four["ddp"]
    # What sharding saves: 3/4 of the 16 bytes per parameter and the buckets, less every weight
    # gathered in bf16 and the fp32 gradients of the root (embedding and head) and two blocks.
    block = (body - m.d_model) / m.n_layers
    gathered = 2 * n + 4 * (n - block * m.n_layers + 2 * block)
    assert one["ddp"] > 16 * n
    assert four["ddp"] - four["fsdp"] == pytest.approx(16 * n * 3 / 4 + 4 * n - gathered)
    # Recomputing more blocks keeps less; a recomputed block keeps its fp32 input, and when every
    # block is recomputed the last one's recompute is at the peak.
    kept = [memory_per_gpu(m, 2048, 8, 1, k)["ddp"] for k in range(m.n_layers + 1)]
    assert all(a > b for a, b in zip(kept[1:-1], kept[2:-1]))
    assert kept[-1] - kept[-2] == 4 * m.d_model * 8 * 2048
    assert kept[m.n_layers // 2] < kept[0]


def test_activation_checkpointing_counts_blocks_from_the_config():
    layers = load_config(overrides=TINY).model.n_layers
    for value, blocks in (("true", layers), ("false", 0), ("1", 1), (str(layers), layers)):
        config = load_config(overrides=[*TINY, f"training.activation_checkpointing={value}"])
        assert recomputed_blocks(config.training, layers) == blocks
    for bad in (-1, layers + 1):
        with pytest.raises(ConfigError, match=f"model.n_layers={layers}"):
            load_config(overrides=[*TINY, f"training.activation_checkpointing={bad}"])
    with pytest.raises(ConfigError, match="expected true/false or int, got 'some'"):
        load_config(overrides=[*TINY, "training.activation_checkpointing=some"])


def test_recomputing_the_first_block_only():
    """activation_checkpointing=1: block 0 runs again in backward (its MLP is entered twice; a
    pre-hook, since the recompute stops early, inside the MLP), block 1 does not; the gradients
    equal a plain model's."""
    config = load_config(overrides=[*TINY, "training.activation_checkpointing=1"])
    torch.manual_seed(0)
    plain = PicoDecoder(config.model)
    recomputing = PicoDecoder(config.model)
    recomputing.load_state_dict(plain.state_dict())
    parallelize(recomputing, config, Dist(), bf16=False)
    calls = [0] * len(recomputing.model.layers)
    for i, block in enumerate(recomputing.model.layers):
        block.mlp.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.randint(0, config.model.vocab_size, (2, 16))
    grads = [torch.autograd.grad(m(x, x), list(m.parameters())) for m in (plain, recomputing)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert calls == [2] + [1] * (len(calls) - 1)


def test_activation_checkpointing_same_gradients_and_capture_sees_one_forward():
    config = load_config(overrides=[*TINY, "training.activation_checkpointing=true"])
    torch.manual_seed(0)
    plain = PicoDecoder(config.model)
    recomputing = PicoDecoder(config.model)
    recomputing.load_state_dict(plain.state_dict())
    par = parallelize(recomputing, config, Dist(), bf16=False)
    assert par.mode == "single" and not par.compiled
    x = torch.randint(0, config.model.vocab_size, (2, 16))
    grads = [torch.autograd.grad(m(x, x), list(m.parameters())) for m in (plain, recomputing)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    calls = []
    handle = recomputing.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    with activation_checkpointing_paused():
        torch.autograd.grad(recomputing(x, x), list(recomputing.parameters()))
    handle.remove()
    assert len(calls) == 1


def test_info_estimates_memory_per_gpu_and_names_the_choice():
    from click.testing import CliRunner

    from pico_train.cli import main

    small_card = ["info", "--preset", "1b", "--gpus", "2", "--gpu-memory-gib", "24"]
    out = CliRunner().invoke(main, small_card).output
    assert "DDP" in out and "FSDP" in out and "auto picks: fsdp" in out
    out = CliRunner().invoke(
        main, ["info", "--preset", "1b", "--gpus", "2", "--gpu-memory-gib", "141"]
    )
    assert "auto picks: ddp" in out.output and "does not fit" not in out.output
    one_40 = ["info", "--preset", "1b", "--gpus", "1", "--gpu-memory-gib", "40"]
    out = CliRunner().invoke(main, one_40).output
    assert "does not fit 90% of 40 GiB: --set training.activation_checkpointing=14" in out
    out = CliRunner().invoke(main, [*one_40[:-1], "24"]).output
    assert "even with every block recomputed" in out
