"""Linear + cross-entropy implementations: time and peak memory of forward + backward.

    python benchmarks/bench_loss.py [--rows 16384] [--repeat 10] [--chunks 26 28]

For the head shapes of the small, medium, large (d 384/768/1536, V 50304) and 1b (d 2048,
V 151936) presets at one
micro-batch of 8 x 2048 tokens, under bf16 autocast on CUDA (fp32 on CPU), times the summed
loss and its gradients with respect to the hidden states and the head weight for: `plain`
(materialised logits + F.cross_entropy, what the model did before loss.py), our `chunked`
(eager and compiled block step), and Liger-Kernel's and cut-cross-entropy's fused kernels when
installed. Prints ms per call, peak memory above the inputs, and the loss's relative difference
from `plain`. What `auto` uses (loss.py) was chosen from these figures (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pico_train import loss as L

SHAPES = {
    "small": (384, 50304),
    "medium": (768, 50304),
    "large": (1536, 50304),
    "1b": (2048, 151936),
}


DEFAULT_CHUNK_LOG2 = L.CHUNK_ELEMENTS.bit_length() - 1
ADDMM = L._ADDMM_OUT_DTYPE


def plain(h, w, y):
    return F.cross_entropy((h @ w.T).float(), y, reduction="sum")


def ours(name, compiled=False, chunk_log2=None, fp32_addmm=True):
    def run(h, w, y):
        L.set_implementation(name, compile_chunks=compiled)
        L.CHUNK_ELEMENTS = 1 << (chunk_log2 or DEFAULT_CHUNK_LOG2)
        L._ADDMM_OUT_DTYPE = fp32_addmm and ADDMM
        try:
            return L.next_token_loss(h, w, y, reduction="sum")
        finally:
            L.CHUNK_ELEMENTS, L._ADDMM_OUT_DTYPE = 1 << DEFAULT_CHUNK_LOG2, ADDMM

    return run


def measure(fn, h, w, y, repeat, device):
    def once():
        hh = h.detach().requires_grad_()
        ww = w.detach().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = fn(hh, ww, y)
        out.backward()
        return out.detach()

    for _ in range(3):
        value = once()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    began = time.perf_counter()
    for _ in range(repeat):
        value = once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - began) / repeat * 1e3
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else 0.0
    return ms, peak, value.item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=8 * 2048)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument(
        "--chunks",
        nargs="*",
        type=int,
        default=[],
        help="also time the compiled blocks at these log2(loss.CHUNK_ELEMENTS) values",
    )
    a = p.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # one compiled block per shape and variant
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    candidates = {
        "plain": plain,
        "chunked": ours("chunked"),
        "chunked+compile": ours("chunked", compiled=True),
    }
    if ADDMM and torch.cuda.is_available():
        candidates["chunked+compile, bf16 partial dW"] = ours(
            "chunked", compiled=True, fp32_addmm=False
        )
    for log2 in a.chunks:
        candidates[f"chunked+compile 2^{log2}"] = ours("chunked", compiled=True, chunk_log2=log2)
    for lib in ("liger", "cce"):
        if L.available(lib):
            candidates[lib] = ours(lib)
    for shape in a.shapes:
        d, v = SHAPES[shape]
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(a.rows, d, device=device, generator=g)
        w = torch.randn(v, d, device=device, generator=g) * 0.02
        y = torch.randint(0, v, (a.rows,), device=device, generator=g)
        reference = None
        print(f"{shape}: rows {a.rows}, d {d}, V {v} on {device}")
        for name, fn in candidates.items():
            try:
                ms, peak, value = measure(fn, h, w, y, a.repeat, device)
            except Exception as err:  # a library that cannot run this shape is reported, not fatal
                print(f"  {name:34s} failed: {type(err).__name__}: {str(err)[:200]}")
                continue
            reference = value if reference is None else reference
            print(
                f"  {name:34s} {ms:8.2f} ms  peak +{peak:6.2f} GiB  "
                f"loss rel. diff {abs(value - reference) / abs(reference):.2e}"
            )
    L.set_implementation("auto")


if __name__ == "__main__":
    main()
