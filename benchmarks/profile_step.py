"""Where one compiled training micro-batch spends its GPU time, per preset.

    python benchmarks/profile_step.py --preset small [--chunk-log2 28] [--top 25]
        [--compile cudagraphs] [--memory-budget 0.5] [--checkpoint-blocks K] [--sdpa flash]

Builds the preset's model (default config: bf16 autocast, compiled as `training.compile: auto`
does), runs forward + backward of one micro-batch of random tokens (micro-batch x seq_len of the
default config) through the training loop's `parallelize` and a fused AdamW step, then prints:
milliseconds per micro-batch (forward + backward) and per optimizer step, the tokens/s and peak
memory they imply, and torch.profiler's kernels by GPU time over two micro-batches.
--chunk-log2 sets loss.CHUNK_ELEMENTS, to compare loss block sizes in the model; --compile is
training.compile (auto and true: torch.compile; cudagraphs: also CUDA graphs); --memory-budget
sets the compiler's activation memory budget
(torch._functorch.config.activation_memory_budget: below 1 its partitioner recomputes the
cheapest saved activations in backward until they fit the fraction); --checkpoint-blocks
recomputes whole blocks instead; --sdpa allows only one attention backend (flash, cudnn or
efficient; see bench_attention.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from pico_train import loss as L
from pico_train.config import load_config
from pico_train.distributed import Dist
from pico_train.model import PicoDecoder
from pico_train.parallelize import parallelize


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", required=True)
    p.add_argument("--chunk-log2", type=int, default=None)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument(
        "--checkpoint-blocks", type=int, default=0, help="recompute the first K blocks in backward"
    )
    p.add_argument("--compile", default="auto", help="training.compile")
    p.add_argument("--memory-budget", type=float, default=None)
    p.add_argument("--sdpa", choices=["flash", "cudnn", "efficient"], default=None)
    a = p.parse_args()
    if a.sdpa is not None:
        torch.backends.cuda.enable_flash_sdp(a.sdpa == "flash")
        torch.backends.cuda.enable_cudnn_sdp(a.sdpa == "cudnn")
        torch.backends.cuda.enable_mem_efficient_sdp(a.sdpa == "efficient")
        torch.backends.cuda.enable_math_sdp(False)
    if a.memory_budget is not None:
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = a.memory_budget
    if a.chunk_log2 is not None:
        L.CHUNK_ELEMENTS = 1 << a.chunk_log2
    config = load_config(
        None,
        [
            f"preset={a.preset}",
            f"training.compile={a.compile}",
            f"training.activation_checkpointing={a.checkpoint_blocks}",
        ],
    )
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = PicoDecoder(config.model).to(device)
    par = parallelize(model, config, Dist(device=device), bf16=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    b, t = config.training.micro_batch_size, config.seq_len
    ids = torch.randint(0, config.model.vocab_size, (b, t + 1), device=device)

    def micro_batch():
        par.begin_micro_batch()  # CUDA graphs: a new replay, gradient buffers in place
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = par.forward(ids[:, :-1], ids[:, 1:])
        loss.backward()

    began = time.perf_counter()
    micro_batch()
    torch.cuda.synchronize()
    print(
        f"{a.preset}: chunk 2^{L.CHUNK_ELEMENTS.bit_length() - 1}, "
        f"{a.checkpoint_blocks} blocks checkpointed, compile {a.compile} (CUDA graphs "
        f"{par.cuda_graphs}), memory budget "
        f"{a.memory_budget}, attention {a.sdpa or 'default'}, first micro-batch "
        f"(compile) {time.perf_counter() - began:.1f} s"
    )
    for _ in range(3):
        micro_batch()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in range(a.repeat):
        micro_batch()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - began) / a.repeat * 1e3
    began = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    torch.cuda.synchronize()
    opt_ms = (time.perf_counter() - began) * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30
    steps = config.training.global_batch_size // b
    rate = b * t * steps / (steps * ms + opt_ms) * 1e3
    print(
        f"  {ms:.2f} ms per micro-batch, {opt_ms:.2f} ms per optimizer step: "
        f"{rate / 1e3:.1f}k tokens/s at {steps} micro-batches per step; peak {peak:.2f} GiB"
    )
    if a.top == 0:
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            micro_batch()
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(
            sort_by="self_cuda_time_total", row_limit=a.top, max_name_column_width=70
        )
    )


if __name__ == "__main__":
    main()
