"""The one next-token loss: linear head + cross-entropy, without full-vocabulary fp32 logits.

Read by the model's forward (training), evaluate.py (held-out loss) and capture.py (the captured
batch's loss and gradients); nothing else computes a cross-entropy. It takes the final hidden
states and the output head's weight rather than logits, so the head's matrix multiply and the
cross-entropy run together, a block of rows at a time:

    loss_i = logsumexp_v(h_i . W_v) - h_i . W_{y_i}         (token i, target y_i, vocabulary v)
    mean   = sum_{i: y_i != ignore} loss_i / #{i: y_i != ignore};   sum = the numerator

Implementations (`set_implementation`; their losses agree to float rounding):
- ``chunked`` (ours): rows in blocks of about `CHUNK_ELEMENTS / V`; each block's logits are
  made in the compute dtype, turned into fp32 loss terms and, when gradients are needed, into
  dLoss/dh and dLoss/dW at once (softmax - onehot, Wijmans et al. 2024 "Cut your losses";
  Hsu et al. 2024 "Liger-Kernel" do the same on the GPU), so only one block's (rows, V) fp32
  logits ever exist. The block step can be compiled (`compile_chunks`).
- ``liger``: Liger-Kernel's fused linear cross-entropy (Triton, CUDA only).
- ``cce``: Apple's cut-cross-entropy (Triton, CUDA only).
- ``auto``: ours everywhere. On one H200 (BENCHMARKS.md, "Loss implementations"), with blocks
  of up to 2^28 logits, our compiled blocks were faster than both libraries at the small and 1b
  heads (1b: 62.3 ms against Liger-Kernel's 67.0 and cut-cross-entropy's 67.0 per 16,384
  tokens); Liger-Kernel also failed inside the compiled 1b training step with an illegal memory
  access (liger-kernel 0.8.5), and cut-cross-entropy skips small gradient terms by default (its
  gradients fail our exactness test). Both stay selectable.

Under autocast the matrix multiplies run in the autocast dtype (as `nn.Linear` would) and the
softmax, log-sum-exp and accumulation in fp32.
"""

from __future__ import annotations

import importlib.util

import torch

IGNORE_INDEX = -100
# Logits per block (an upper bound): the rows are split into equal blocks of at most this many
# logits. Larger blocks cost memory; smaller ones cost time, because every block also reads and
# writes the (V, d) fp32 head-gradient accumulator (BENCHMARKS.md, "Loss implementations").
CHUNK_ELEMENTS = 1 << 28  # 1 GiB of fp32 logits; on an H200 2^28 was 1.4x faster than 2^26 at 1b
IMPLEMENTATIONS = ("auto", "chunked", "liger", "cce")

_state = {"impl": "auto", "compile": False}


def set_implementation(name: str = "auto", *, compile_chunks: bool = False) -> None:
    """Choose the implementation for every later call; compile_chunks compiles ours' block step."""
    if name not in IMPLEMENTATIONS:
        options = ", ".join(IMPLEMENTATIONS)
        raise ValueError(f"loss implementation '{name}' is not one of {options}.")
    _state["impl"], _state["compile"] = name, compile_chunks


def available(name: str) -> bool:
    """Whether an implementation can run here (the libraries need CUDA and their package)."""
    if name in ("auto", "chunked"):
        return True
    module = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}[name]
    return torch.cuda.is_available() and importlib.util.find_spec(module) is not None


def resolve() -> str:
    """The implementation in use (`auto` means ours, see the module docstring)."""
    return "chunked" if _state["impl"] == "auto" else _state["impl"]


def next_token_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy of softmax(hidden @ head_weight^T) against targets, as an fp32 scalar.

    hidden: (..., d) final-normed hidden states; head_weight: (V, d); targets: (...) token ids,
    ignore_index where no loss is taken. reduction: "mean" over the non-ignored tokens, or "sum".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    y = targets.reshape(-1)  # (N,)
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        h = h.to(torch.get_autocast_dtype(device_type))
    impl = resolve()
    with torch.autocast(device_type, enabled=False):
        if impl == "liger":
            total = _liger_sum(h, head_weight.to(h.dtype), y, ignore_index)
        elif impl == "cce":
            total = _cce_sum(h, head_weight.to(h.dtype), y, ignore_index)
        else:
            grad = torch.is_grad_enabled()
            total = _ChunkedLinearCrossEntropy.apply(
                h,
                head_weight,
                y,
                ignore_index,
                _state["compile"],
                grad and h.requires_grad,
                grad and head_weight.requires_grad,
            )
    if reduction == "sum":
        return total
    return total / (y != ignore_index).sum()


# ----------------------------------------------------------------------------------------------
# Ours: blocks of rows, loss and gradients from the same logits
# ----------------------------------------------------------------------------------------------


def rows_per_block(n: int, v: int) -> int:
    """Rows per block: n rows split into the fewest equal blocks of <= CHUNK_ELEMENTS logits."""
    blocks = max(1, -(-n * v // CHUNK_ELEMENTS))
    return max(1, -(-n // blocks))


_ADDMM_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype")  # addmm(..., out_dtype=): torch >= 2.8


def _fp32_accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc + a @ b with acc fp32 and a, b possibly bf16/fp16.

    Run eagerly on CUDA, the product is added inside the matrix multiply in fp32 (cuBLAS,
    addmm's out_dtype), so the (V, d) partial product is never written in bf16 and read back.
    Elsewhere, and under torch.compile (whose fake-tensor decomposition of addmm's out_dtype
    overload fails in torch 2.11), it is computed in a's dtype and added in fp32.
    """
    fused = _ADDMM_OUT_DTYPE and not torch.compiler.is_compiling()
    if fused and a.dtype != acc.dtype and a.is_cuda:
        return torch.addmm(acc, a, b, out_dtype=torch.float32)
    return acc + (a @ b).float()


def _block(h, w, y, ignore_index: int, grad_w: torch.Tensor | None, grad_h: bool):
    """One block: its summed loss (fp32); dSum/dh (b, d) in fp32 if grad_h; and, given the head
    gradient so far (V, d, fp32), that plus this block's dSum/dW."""
    logits = (h @ w.T).float()  # (b, V): the only full-vocabulary tensor, one block of it
    valid = y != ignore_index  # (b,)
    safe = torch.where(valid, y, 0)
    lse = torch.logsumexp(logits, dim=-1)  # (b,)
    target_logit = logits.gather(1, safe[:, None]).squeeze(1)
    total = ((lse - target_logit) * valid).sum()
    if grad_w is None and not grad_h:
        return total, None, None
    # d loss_i / d logits_i = softmax_i - onehot(y_i); zero for ignored rows.
    g = torch.exp(logits - lse[:, None])
    g.scatter_add_(1, safe[:, None], torch.full_like(target_logit[:, None], -1.0))
    g = (g * valid[:, None]).to(h.dtype)
    gh = (g @ w).float() if grad_h else None
    if grad_w is not None:
        grad_w = _fp32_accumulate(grad_w, g.T, h)
    return total, gh, grad_w


_compiled_block = None


def _block_fn(compiled: bool):
    global _compiled_block
    if not compiled or torch.compiler.is_compiling():  # inside a compiled model: traced there
        return _block
    if _compiled_block is None:
        _compiled_block = torch.compile(_block, dynamic=False)
    return _compiled_block


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of h @ w^T; gradients are made in the forward pass, block by block.

    w is the head weight as stored (fp32 master weights under autocast) and is used in h's
    dtype; its gradient is summed over blocks in fp32 and returned in w's dtype, so under
    autocast the head's gradient is never rounded to bf16 (nn.Linear's would be).
    """

    @staticmethod
    def forward(ctx, h, weight, y, ignore_index, compiled, need_h, need_w):
        # Purely functional (no in-place writes into buffers that are then saved): torch 2.11's
        # compiled graph saved such a buffer as it was before the writes, so every gradient was
        # zero on the GPU (BENCHMARKS.md, "Training throughput per preset"). need_h and need_w
        # are decided by the caller, from grad mode and requires_grad.
        w = weight.to(h.dtype)
        rows = rows_per_block(h.shape[0], w.shape[0])
        step = _block_fn(compiled)
        total, pieces = torch.zeros((), dtype=torch.float32, device=h.device), []
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        for start in range(0, h.shape[0], rows):
            end = min(start + rows, h.shape[0])
            part, gh, grad_w = step(h[start:end], w, y[start:end], ignore_index, grad_w, need_h)
            total = total + part
            if need_h:
                pieces.append(gh.to(h.dtype))
        ctx.save_for_backward(torch.cat(pieces) if need_h else None, grad_w)
        ctx.w_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w = ctx.saved_tensors
        dh = grad_h * grad_total.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * grad_total).to(ctx.w_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# Libraries (CUDA)
# ----------------------------------------------------------------------------------------------


def _liger_sum(h, w, y, ignore_index):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(
        h, w, y, ignore_index=ignore_index, reduction="sum"
    ).float()


def _cce_sum(h, w, y, ignore_index):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(h, w, y, ignore_index=ignore_index, reduction="sum").float()
