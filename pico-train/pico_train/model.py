"""The pico-decoder: a LLaMA-style pre-norm decoder in one file.

Reads a ModelConfig; is read by the training loop, capture and checkpoint writer. Top to bottom:
RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, block, decoder, KV cache, generation.

Module and parameter names are a contract: they equal transformers' ``LlamaForCausalLM`` names
(``model.layers.3.self_attn.v_proj.weight`` ...), and the rotary convention is Llama's
"rotate half", so a state dict saves as a Llama checkpoint with no conversion and capture keys are
stable. Shapes: B batch, T query length, S key length, H query heads, K key/value heads, D head
dim, d model width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pico_train.config import ModelConfig
from pico_train.loss import next_token_loss


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, normalised in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_len, D): angle(p, i) = p * theta^(-2i/D), duplicated over halves."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, D)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (B, heads, T, D) by the angles of cos/sin (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Preallocated keys/values for generation: (n_layers, B, K, max_len, D) each."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions already filled, the same for every layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append k, v (B, K, T, D) for `layer`; return all keys/values so far (B, K, S, D)."""
        end = self.length + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache holds {self.k.shape[3]} positions; {end} requested.")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Grouped-query attention: H query heads share K key/value heads (Ainslie et al. 2023)."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.n_heads,
            config.n_kv_heads,
            config.head_dim,
        )
        d, hd = config.d_model, config.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B,K,T,D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_heads != self.n_kv_heads
        if cache is None or cache.length == 0:
            if cache is not None:
                k, v = cache.update(self.layer, k, v)
            # Training path: the flash/efficient kernels build the causal mask themselves.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D)
            S = k.shape[2]
            # Query t (absolute position S - T + t) sees keys 0 .. S - T + t.
            mask = None
            if T > 1:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(config.mlp_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache: KVCache | None = None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderStack(nn.Module):
    """Embedding, blocks, final norm: the part transformers calls `model`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)


class PicoDecoder(nn.Module):
    """The pico-decoder language model (untied input and output embeddings)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        # Not parameters and not saved: rebuilt from the config (transformers does the same).
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Initialise every parameter in place.

        ``scaled_normal`` (default), as modern LLaMA-style trainers (GPT-2, Megatron, OLMo,
        torchtitan) do: every matrix ~ N(0, init_std^2), the two projections that write into the
        residual stream (o_proj, down_proj) ~ N(0, init_std^2 / (2 * n_layers)) so the residual
        stream's variance does not grow with depth, norm weights 1. The original pico used
        PyTorch defaults: nn.Embedding ~ N(0, 1), far larger than the 0.02-scale projections,
        and nn.Linear's Kaiming-uniform whose scale 1/sqrt(3 * fan_in) changes with width, so
        models of different sizes started from differently scaled states.
        ``pytorch_default`` reproduces that for comparisons.
        """
        config = self.config
        if config.init == "pytorch_default":
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.reset_parameters()
                elif isinstance(module, RMSNorm):
                    nn.init.ones_(module.weight)
            return
        residual_std = config.init_std / math.sqrt(2 * config.n_layers)
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, residual_std, generator=generator)
            else:
                nn.init.normal_(p, 0.0, config.init_std, generator=generator)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None):
        """Final-normed hidden states (B, T, d) for token ids (B, T)."""
        T = input_ids.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"{start + T} positions exceed max_seq_len={self.config.max_seq_len}.")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, D)
        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        for block in self.model.layers:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.length += T
        return self.model.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits (B, T, V); or, given targets (B, T), the next-token cross-entropy.

        With targets, the loss (fp32; "mean" over non-ignored tokens or "sum", targets equal to
        loss.IGNORE_INDEX ignored) comes from `loss.next_token_loss`, which never holds the
        (B, T, V) logits in fp32 at once.
        """
        hidden = self.hidden_states(input_ids, cache)  # (B, T, d)
        if targets is None:
            return self.lm_head(hidden)  # (B, T, V)
        return next_token_loss(hidden, self.lm_head.weight, targets, reduction=reduction)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue prompts (B, T) by up to max_new_tokens tokens; returns (B, T + new).

        temperature 0 is greedy decoding; otherwise tokens are sampled from the softmax at that
        temperature restricted to the smallest set of tokens whose probability reaches top_p
        (nucleus sampling, Holtzman et al. 2020), drawing from `generator` for reproducibility.
        With use_cache the prompt is encoded once and each new token costs one position
        (KV cache); without it every step re-encodes the whole sequence (for testing).
        """
        total = input_ids.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(
                f"prompt + max_new_tokens = {total} exceeds max_seq_len={self.config.max_seq_len}."
            )
        p = next(self.parameters())
        cache = (
            KVCache(self.config, input_ids.shape[0], total, p.device, p.dtype)
            if use_cache
            else None
        )
        out, step_input = input_ids, input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self(step_input if use_cache else out, cache=cache)[:, -1].float()  # (B, V)
            token = sample_next(logits, temperature, top_p, generator)  # (B,)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            out = torch.cat([out, token[:, None]], dim=1)
            step_input = token[:, None]
            if eos_token_id is not None and bool(finished.all()):
                break
        return out


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first is kept).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# Size and cost, in closed form (a test checks them against the built modules)
# ----------------------------------------------------------------------------------------------


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Total parameters, and without the input and output embeddings."""
    attn = config.d_model * config.head_dim * (2 * config.n_heads + 2 * config.n_kv_heads)
    mlp = 3 * config.d_model * config.mlp_hidden
    per_layer = attn + mlp + 2 * config.d_model
    body = config.n_layers * per_layer + config.d_model
    embeddings = 2 * config.vocab_size * config.d_model
    return {"total": body + embeddings, "non_embedding": body, "embedding": embeddings}


def training_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Forward + backward FLOPs per token: 6 * N_matmul + 12 * n_layers * d * T.

    N_matmul counts every weight used in a matrix multiply (all but the input embedding, which
    is a lookup, and the norms); the second term is attention's QK^T and AV over a full context
    of T tokens (Kaplan et al. 2020; Chowdhery et al. 2022, appendix B). Causal masking would
    halve the attention term; like PaLM's MFU accounting we do not subtract it.
    """
    T = seq_len or config.max_seq_len
    counts = parameter_counts(config)
    n_matmul = (
        counts["non_embedding"]
        - (2 * config.n_layers + 1) * config.d_model
        + config.vocab_size * config.d_model
    )
    return 6 * n_matmul + 12 * config.n_layers * config.d_model * T
