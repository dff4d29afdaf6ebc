"""CUDA code paths: bf16 autocast training, fused AdamW, compile, capture on the device.

Skipped where there is no GPU (CI); run on the lent GPU machine.
"""

import pytest
import torch
import torch.nn.functional as F

from pico_format import CaptureReader, RunPaths, checkpoint_transaction, latest_step
from pico_train.capture import capture_learning_dynamics
from pico_train.checkpoint import save_model_files
from pico_train.config import CaptureConfig, ModelConfig
from pico_train.distributed import Dist
from pico_train.model import PicoDecoder
from pico_train.monitor import read_log
from pico_train.train import train

from tiny_runs import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CFG = ModelConfig(
    d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128, vocab_size=128, max_seq_len=64
)


def test_training_on_cuda_bf16_compiled(tmp_path):
    result = train(
        tiny_config(
            tmp_path / "run",
            "training.compile=true",
            "training.max_steps=6",
            "checkpointing.every=3",
        )
    )
    run = RunPaths(result.run_dir)
    rows = [r for r in read_log(run.log) if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    # It learns: a compiled loss once returned all-zero gradients under torch 2.11 (loss.py).
    assert all(r["grad_norm"] > 0 for r in rows)
    manifest = CaptureReader(run.checkpoint(latest_step(run)), "eval").manifest
    assert manifest.activation_dtype == "bfloat16"
    assert all(i.dtype == "float32" for i in manifest.tensors["gradients"].values())


def _steps(run_dir) -> list[dict]:
    return [r for r in read_log(RunPaths(run_dir).log) if "loss" in r]


def test_cuda_graphs_train_as_the_compiled_and_eager_model(tmp_path):
    """training.compile=cudagraphs accumulates 2 micro-batches per step through replayed graphs,
    with evaluation and capture (eager) at checkpoints between replays: the plain compiled run's
    losses and gradient norms (also with every block recomputed in backward), the eager run's to
    bf16 noise, non-zero gradients, and a run resumed from step 3 continues the same curve."""
    shape = ["training.max_steps=6", "checkpointing.steps=[]"]  # checkpoints at 3 and 6
    variants = {
        "false": ["training.compile=false"],
        "true": ["training.compile=true"],
        "cudagraphs": ["training.compile=cudagraphs"],
        "recompute": ["training.compile=cudagraphs", "training.activation_checkpointing=true"],
    }
    rows = {
        m: _steps(train(tiny_config(tmp_path / m, *shape, *o)).run_dir) for m, o in variants.items()
    }
    loss = {m: torch.tensor([r["loss"] for r in rs]) for m, rs in rows.items()}
    norm = {m: torch.tensor([r["grad_norm"] for r in rs]) for m, rs in rows.items()}
    assert len(loss["cudagraphs"]) == 6 and (norm["cudagraphs"] > 0).all()
    # The same kernels replayed: the compiled run's figures (atomics in the embedding's
    # backward may reorder fp32 sums).
    torch.testing.assert_close(loss["cudagraphs"], loss["true"], rtol=1e-4, atol=0)
    torch.testing.assert_close(norm["cudagraphs"], norm["true"], rtol=1e-3, atol=0)
    torch.testing.assert_close(loss["cudagraphs"], loss["false"], rtol=2e-2, atol=0)
    torch.testing.assert_close(norm["cudagraphs"], norm["false"], rtol=5e-2, atol=0)
    # Blocks recomputed in backward inside the graphs: the same figures.
    torch.testing.assert_close(loss["recompute"], loss["true"], rtol=1e-4, atol=0)
    torch.testing.assert_close(norm["recompute"], norm["true"], rtol=1e-3, atol=0)
    run = RunPaths(tmp_path / "cudagraphs")
    assert CaptureReader(run.checkpoint(6), "train").manifest.batch_size == 4
    # Resume from step 3: drop checkpoint 6, point latest.json at 3, run again (a new Trainer
    # records its graphs anew).
    import json
    import shutil

    shutil.rmtree(run.checkpoint(6).root)
    pointer = json.loads(run.latest.read_text())
    last, back = run.checkpoint(6).root.name, run.checkpoint(3).root.name
    run.latest.write_text(json.dumps({"step": 3, "path": pointer["path"].replace(last, back)}))
    again = _steps(train(tiny_config(run.root, *shape, "training.compile=cudagraphs")).run_dir)
    resumed = torch.tensor([r["loss"] for r in again if r["step"] > 3])
    torch.testing.assert_close(resumed, loss["cudagraphs"][3:], rtol=1e-4, atol=0)


def test_fp8_training_on_cuda_keeps_the_checkpoint_format(tmp_path):
    pytest.importorskip("torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs float8 tensor cores")
    from transformers import AutoModelForCausalLM

    shape = ["model.d_model=64", "model.mlp_hidden=128", "training.max_steps=6"]
    runs = {}
    for precision in ("bf16", "fp8"):
        result = train(tiny_config(tmp_path / precision, *shape, f"training.precision={precision}"))
        runs[precision] = RunPaths(result.run_dir)
    losses = {
        p: torch.tensor([r["loss"] for r in read_log(run.log) if "loss" in r])
        for p, run in runs.items()
    }
    assert torch.isfinite(losses["fp8"]).all() and losses["fp8"][-1] < losses["fp8"][0]
    # Same initial weights and data: float8 rounding moves the first loss by well under 1%.
    torch.testing.assert_close(losses["fp8"][0], losses["bf16"][0], rtol=1e-2, atol=0)
    step = latest_step(runs["fp8"])
    loaded = AutoModelForCausalLM.from_pretrained(str(runs["fp8"].checkpoint(step).root))
    names = {n for n, _ in loaded.named_parameters()}
    assert "model.layers.1.mlp.down_proj.weight" in names


def test_cuda_logits_match_cpu():
    torch.manual_seed(0)
    model = PicoDecoder(CFG)
    x = torch.randint(0, 128, (2, 40))
    cpu = model(x)
    gpu = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model(x.cuda()).float().cpu()
    assert (bf16 - cpu).abs().max() < 0.1


def test_flash_gqa_kernel_matches_math():
    torch.manual_seed(0)
    q = torch.randn(2, 8, 128, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, 128, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 2, 128, 64, device="cuda", dtype=torch.bfloat16)
    fast = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = F.scaled_dot_product_attention(
        q.float(),
        k.repeat_interleave(4, 1).float(),
        v.repeat_interleave(4, 1).float(),
        is_causal=True,
    )
    torch.testing.assert_close(fast.float(), ref, atol=2e-2, rtol=2e-2)


def test_capture_on_cuda_matches_cpu(tmp_path):
    torch.manual_seed(0)
    model = PicoDecoder(CFG)
    rows = torch.randint(0, 128, (8, 33))
    cfg = CaptureConfig(batch_size=8, micro_batch_size=4, activation_dtype="fp32")
    out = {}
    for device in ("cpu", "cuda"):
        model = model.to(device)
        run = RunPaths(tmp_path / device)
        with checkpoint_transaction(run, 0) as ckpt:
            capture_learning_dynamics(
                model,
                cfg,
                0,
                {"train": rows.to(device), "eval": rows.to(device)},
                Dist(device=torch.device(device)),
                None,
                ckpt,
            )
            save_model_files(ckpt.root, model)  # the captured weights are read from here
        out[device] = CaptureReader(run.checkpoint(0), "eval")
    for kind in ("activations", "weights", "gradients"):
        for m in out["cpu"].modules(kind):
            torch.testing.assert_close(
                out["cuda"].get(kind, m), out["cpu"].get(kind, m), atol=1e-4, rtol=1e-3
            )


@pytest.mark.parametrize("impl", ["chunked", "liger"])  # cce filters small gradient terms
def test_loss_implementations_match_plain_on_cuda(impl, monkeypatch):
    from pico_train import loss as L

    if not L.available(impl):
        pytest.skip(f"{impl} is not installed")
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 1 << 20)  # several blocks
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(1000, 64, device="cuda", generator=g).requires_grad_()
    w = (torch.randn(3000, 64, device="cuda", generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, 3000, (1000,), device="cuda", generator=g)
    y[::7] = L.IGNORE_INDEX
    ref = F.cross_entropy(h @ w.T, y, ignore_index=L.IGNORE_INDEX)
    ref_grads = torch.autograd.grad(ref, (h, w))
    try:
        for compiled in (False, True) if impl == "chunked" else (False,):
            L.set_implementation(impl, compile_chunks=compiled)
            ours = L.next_token_loss(h, w, y)
            grads = torch.autograd.grad(ours, (h, w))
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0)
            for a, b in zip(grads, ref_grads):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    finally:
        L.set_implementation("auto")


@pytest.mark.parametrize("fp32_addmm", [True, False])
def test_chunked_loss_under_bf16_autocast_on_cuda(fp32_addmm, monkeypatch):
    """Under autocast the head gradient is summed over blocks in fp32 (inside cuBLAS with
    addmm's out_dtype, or added after a bf16 product): both within bf16 rounding of the
    materialised-logits reference."""
    from pico_train import loss as L

    monkeypatch.setattr(L, "CHUNK_ELEMENTS", 1 << 20)  # several blocks
    monkeypatch.setattr(L, "_ADDMM_OUT_DTYPE", fp32_addmm and L._ADDMM_OUT_DTYPE)
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(2000, 128, device="cuda", generator=g).requires_grad_()
    w = (torch.randn(3000, 128, device="cuda", generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, 3000, (2000,), device="cuda", generator=g)
    y[::5] = L.IGNORE_INDEX
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ w.T).float(), y, ignore_index=L.IGNORE_INDEX)
        ours = L.next_token_loss(h, w, y)
    ref_grads = torch.autograd.grad(ref, (h, w))
    grads = torch.autograd.grad(ours, (h, w))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0)  # bf16 logits, blocks vs whole
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype == torch.float32
        # bf16 rounding of the largest terms: a tolerance on the gradient's scale
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-2 * b.abs().max().item())


# ----------------------------------------------------------------------------------------------
# Two GPUs (NCCL): run on the lent 2-GPU machine
# ----------------------------------------------------------------------------------------------

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
GPU_RUN = [
    "training.max_steps=4",
    "training.global_batch_size=8",
    "training.micro_batch_size=2",
    "checkpointing.every=2",
    "checkpointing.steps=[]",
    "capture.batch_size=1",  # the second rank holds none of it: the shape that hung
    "distributed.timeout_s=120",
]


def _torchrun(run_dir, *extra):
    import os

    from pico_train.distributed import launch_command

    from tiny_runs import TINY, run_process_group

    sets = [*TINY, *GPU_RUN, f"run_dir={run_dir}", *extra]
    cmd = launch_command(2, ["train", *[a for o in sets for a in ("--set", o)]])
    proc = run_process_group(cmd, env={**os.environ}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [r["loss"] for r in read_log(RunPaths(run_dir).log) if "loss" in r]


@two_gpus
@pytest.mark.slow
def test_two_gpus_ddp_and_fsdp_agree_and_capture_a_batch_smaller_than_a_share(tmp_path):
    from transformers import AutoModelForCausalLM

    from pico_train.checkpoint import load_model

    ddp = _torchrun(tmp_path / "ddp", "training.parallelism=ddp")
    fsdp = _torchrun(tmp_path / "fsdp", "training.parallelism=fsdp")
    assert len(ddp) == len(fsdp) == 4
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=2e-2, atol=0)
    for name in ("ddp", "fsdp"):
        ckpt = RunPaths(tmp_path / name).checkpoint(4)
        assert CaptureReader(ckpt, "train").manifest.batch_size == 1
        ours = load_model(ckpt.root)
        hf = AutoModelForCausalLM.from_pretrained(str(ckpt.root))
        x = torch.randint(0, ours.config.vocab_size, (1, 16))
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-4, rtol=1e-4)
