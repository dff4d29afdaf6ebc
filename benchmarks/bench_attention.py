"""Causal attention's forward + backward per preset shape and SDPA backend, on one GPU.

    python benchmarks/bench_attention.py [--presets small medium large 1b] [--repeat 20]

Times F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=...) forward and
backward at the default config's micro-batch (8 x 2048) in bf16, with q, k and v laid out as
the model makes them (projections viewed as (B, T, H, D) and transposed), for each backend
torch offers (flash, cuDNN, memory-efficient, and the dispatcher's own choice), and prints
milliseconds per layer and per micro-batch (x n_layers). A backend that refuses the shape
prints why.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pico_train.config import PRESETS

BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def time_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def attention_step(q, k, v, grad, backend) -> None:
    """One causal forward + backward, through `backend` (None: the dispatcher's choice)."""
    gqa = q.shape[1] != k.shape[1]
    if backend is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        with sdpa_kernel([backend]):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    y.backward(grad)


def as_model_lays_out(batch: int, seq: int, heads: int, head_dim: int) -> torch.Tensor:
    """(B, H, T, D) as a transposed view of a (B, T, H, D) projection, as model.py makes it."""
    x = torch.randn(batch, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    return x.transpose(1, 2).requires_grad_()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", nargs="+", default=["small", "medium", "large", "1b"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=20)
    a = p.parse_args()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for name in a.presets:
        m = PRESETS[name]
        shape = f"{name:>6} (H {m.n_heads}, KV {m.n_kv_heads}, D {m.head_dim})"
        q = as_model_lays_out(a.batch, a.seq, m.n_heads, m.head_dim)
        k = as_model_lays_out(a.batch, a.seq, m.n_kv_heads, m.head_dim)
        v = as_model_lays_out(a.batch, a.seq, m.n_kv_heads, m.head_dim)
        grad = torch.randn_like(q)
        for label, backend in BACKENDS.items():
            try:
                ms = time_ms(partial(attention_step, q, k, v, grad, backend), a.repeat)
            except RuntimeError as error:
                print(f"{shape} {label:>9}: refused ({str(error).splitlines()[0][:90]})")
                continue
            print(
                f"{shape} {label:>9}: {ms:6.3f} ms per layer, "
                f"{ms * m.n_layers:6.1f} ms per micro-batch ({m.n_layers} layers)"
            )


if __name__ == "__main__":
    main()
