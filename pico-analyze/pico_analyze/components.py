"""Components: the matrices the metrics measure, built from a loaded Checkpoint's tensors.

Reads tensors already in memory (a :class:`~pico_analyze.load.Checkpoint`; nothing is reloaded
per metric) and writes component tensors: one module's activations/weights/gradients
(``simple``), or the attention OV and QK circuits of each head and of all heads side by side.
Circuits are formed in float64 on the tensors' device: the product of the stored factors is
then exact to float64 rounding, and the singular values the runner takes from the factors agree
with a decomposition of the circuit itself to ~1e-12.

Notation for one attention layer (PyTorch ``nn.Linear`` weights are ``(out, in)``): ``d`` model
width, ``H`` query heads, ``K`` key/value heads, ``hd`` head dim, ``g(h) = h // (H / K)`` the
key/value head read by query head ``h`` (grouped-query attention), and

    W_V,g = v_proj.weight[g*hd:(g+1)*hd, :]    (hd x d)
    W_O,h = o_proj.weight[:, h*hd:(h+1)*hd]    (d x hd)
    W_Q,h = q_proj.weight[h*hd:(h+1)*hd, :]    (hd x d)
    W_K,g = k_proj.weight[g*hd:(g+1)*hd, :]    (hd x d)

Head ``h`` adds ``W_O,h sum_j A_h[i, j] W_V,g x_j`` to the residual stream at position ``i``,
where ``x_j`` is the normed block input and ``A_h`` the attention pattern. So the OV circuit of
head ``h`` is the d x d matrix ``M_h = W_O,h W_V,g`` (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits"). The original pico-analyze multiplied the factors in the
opposite order (``W_V,g W_O,h``, an hd x hd matrix that is not the circuit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pico_analyze.load import ModelShape
from pico_format import CAPTURE_KINDS as KINDS
from pico_format.modules import RESIDUAL, module_name

COMPONENT_TYPES = ("simple", "ov_circuit", "qk_circuit")
HEAD_MODES = ("per_head", "concat", "both")
V_PROJ, O_PROJ, Q_PROJ, K_PROJ = (
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_proj",
    "self_attn.k_proj",
)


# ----------------------------------------------------------------------------------------------
# Circuits (pure functions of tensors)
# ----------------------------------------------------------------------------------------------


def _working(t: torch.Tensor) -> torch.Tensor:
    """`t` in the precision circuits are formed in: float64."""
    return t.double()


def _common(*ts: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of one circuit in its working precision."""
    return [_working(t) for t in ts]


def _kv_index(shape: ModelShape, device) -> torch.Tensor:
    """g(h) for every query head h: (H,) long."""
    return torch.arange(shape.n_heads, device=device) // shape.group_size


def _out_heads(w_o: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """o_proj.weight (d, H*hd) -> W_O,h stacked: (H, d, hd)."""
    d, hd = shape.d_model, shape.head_dim
    if tuple(w_o.shape) != (d, shape.n_heads * hd):
        raise ValueError(
            f"o_proj weight has shape {tuple(w_o.shape)}, expected "
            f"({d}, {shape.n_heads * hd}) for d={d}, {shape.n_heads} heads of {hd}."
        )
    return _working(w_o).view(d, shape.n_heads, hd).permute(1, 0, 2)


def _in_heads(w: torch.Tensor, shape: ModelShape, n_heads: int, what: str) -> torch.Tensor:
    """A (n_heads*hd, d) projection weight -> per-head rows (n_heads, hd, d)."""
    d, hd = shape.d_model, shape.head_dim
    if tuple(w.shape) != (n_heads * hd, d):
        raise ValueError(
            f"{what} weight has shape {tuple(w.shape)}, expected "
            f"({n_heads * hd}, {d}) for {n_heads} heads of {hd}, d={d}."
        )
    return _working(w).view(n_heads, hd, d)


def _value_heads(w_v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """W_V,g(h) for every query head h: (H, hd, d) (GQA: heads of a group share it)."""
    return _in_heads(w_v, shape, shape.n_kv_heads, "v_proj")[_kv_index(shape, w_v.device)]


# Each circuit is a product of per-head factors A_h (m x r) @ B_h (r x n) with r <= 2 hd; the
# factors are kept so the runner can get the singular values from an r x r core.
Factors = tuple[torch.Tensor, torch.Tensor]  # A (H, m, r), B (H, r, n)


def ov_weight_factors(w_v: torch.Tensor, w_o: torch.Tensor, shape: ModelShape) -> Factors:
    """(W_O,h, W_V,g(h)) stacked: (H, d, hd) and (H, hd, d). See :func:`ov_weights`."""
    w_v, w_o = _common(w_v, w_o)
    return _out_heads(w_o, shape), _value_heads(w_v, shape)


def ov_weights(w_v: torch.Tensor, w_o: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """OV circuit of every head: ``M_h = W_O,h @ W_V,g(h)``, stacked (H, d, d).

    ``w_v`` is v_proj.weight (K*hd, d), ``w_o`` o_proj.weight (d, H*hd). ``M_h`` maps a normed
    block input ``x`` (row vector) to the head's write ``x M_h^T`` into the residual stream
    (before attention mixing). Its rank is at most hd.
    """
    return torch.bmm(*ov_weight_factors(w_v, w_o, shape))


def ov_activation_factors(v_out: torch.Tensor, w_o: torch.Tensor, shape: ModelShape) -> Factors:
    """(v_g(h), W_O,h^T) stacked: (H, n, hd) and (H, hd, d). See :func:`ov_activations`."""
    v_out, w_o = _common(v_out, w_o)
    n = v_out.shape[0]
    kv_width = shape.n_kv_heads * shape.head_dim
    if v_out.ndim != 2 or v_out.shape[1] != kv_width:
        raise ValueError(
            f"v_proj activations have shape {tuple(v_out.shape)}, expected "
            f"(n, {kv_width}) for {shape.n_kv_heads} kv heads of {shape.head_dim}."
        )
    v = _working(v_out).view(n, shape.n_kv_heads, shape.head_dim)
    v = v[:, _kv_index(shape, v_out.device)].permute(1, 0, 2)  # (H, n, hd): v_g(h)
    return v, _out_heads(w_o, shape).transpose(1, 2)


def ov_activations(v_out: torch.Tensor, w_o: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """OV activations of every head: ``a_h = v_g(h) @ W_O,h^T``, stacked (H, n, d).

    ``v_out`` is the captured v_proj output (n, K*hd): row ``i`` is ``v = x_i W_V^T`` for the
    normed block input ``x_i`` of captured token ``i``, and ``v_g = v[:, g*hd:(g+1)*hd]``
    (n x hd). Then ``a_h = v_g W_O,h^T = x M_h^T`` (n x d): what head ``h`` would write into the
    residual stream for token ``i`` if it attended to that token alone, i.e. the OV map applied
    to each captured token, without the attention pattern (which is not captured).
    """
    return torch.bmm(*ov_activation_factors(v_out, w_o, shape))


def ov_gradient_factors(
    g_v: torch.Tensor, g_o: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, shape: ModelShape
) -> Factors:
    """([G_O,h | W_O,h], [W_V,g ; G_V,g]) stacked: (H, d, 2hd) and (H, 2hd, d); their product
    is ``G_O,h W_V,g + W_O,h G_V,g``. See :func:`ov_gradients`."""
    g_v, g_o, w_v, w_o = _common(g_v, g_o, w_v, w_o)
    a = torch.cat([_out_heads(g_o, shape), _out_heads(w_o, shape)], dim=2)
    b = torch.cat([_value_heads(w_v, shape), _value_heads(g_v, shape)], dim=1)
    return a, b


def ov_gradients(
    g_v: torch.Tensor, g_o: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, shape: ModelShape
) -> torch.Tensor:
    """OV "gradient" of every head: ``dM_h = G_O,h @ W_V,g + W_O,h @ G_V,g``, (H, d, d).

    ``G_O = dL/d o_proj.weight`` (d, H*hd) and ``G_V = dL/d v_proj.weight`` (K*hd, d) are the
    captured weight gradients, sliced per head like the weights.

    What it is: the loss depends on ``W_O,h`` and ``W_V,g`` through the attention-weighted
    values, and ``dL/dM_h`` would need the attention patterns, which are not captured (nor is it
    determined by ``G_O, G_V``: where it exists, ``G_O,h = (dL/dM_h) W_V,g^T`` and, summed over
    the heads sharing ``g``, ``G_V,g = sum_h W_O,h^T dL/dM_h``, i.e. projections of it). So we
    define the OV gradient as the first-order change of ``M_h`` implied by the captured parameter
    gradients (product rule): a gradient-descent step ``W <- W - lr G`` moves ``M_h`` by
    ``-lr dM_h + O(lr^2)``. ``dM_h`` is the derivative of ``M_h`` along the negative-gradient
    direction, up to the ``-lr`` factor: the OV circuit's velocity under plain gradient descent,
    not ``dL/dM_h`` (in the single-head case it equals
    ``(dL/dM_h) W_V^T W_V + W_O W_O^T (dL/dM_h)``, the gradient preconditioned by the factors).
    With GQA ``G_V,g`` includes the pull of every head in the group, as the real update does.
    Under Adam the actual update direction differs (it is preconditioned per parameter).

    The original pico-analyze computed the same two products but called the sum
    ``dL/dOV`` "by the chain rule", which it is not, and paired it with OV weights of the wrong
    shape (hd x hd); metrics of its OV gradients and OV weights were not of the same object.
    """
    return torch.bmm(*ov_gradient_factors(g_v, g_o, w_v, w_o, shape))


def qk_weight_factors(w_q: torch.Tensor, w_k: torch.Tensor, shape: ModelShape) -> Factors:
    """(W_Q,h^T, W_K,g(h)) stacked: (H, d, hd) and (H, hd, d). See :func:`qk_weights`."""
    w_q, w_k = _common(w_q, w_k)
    w_q_h = _in_heads(w_q, shape, shape.n_heads, "q_proj")
    w_k_g = _in_heads(w_k, shape, shape.n_kv_heads, "k_proj")[_kv_index(shape, w_k.device)]
    return w_q_h.transpose(1, 2), w_k_g


def qk_weights(w_q: torch.Tensor, w_k: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """QK circuit of every head: ``W_Q,h^T @ W_K,g(h)``, stacked (H, d, d).

    The attention score of query ``x_i`` on key ``x_j`` is ``x_i W_Q,h^T R_{j-i} W_K,g x_j^T /
    sqrt(hd)`` with ``R`` the rotary rotation; this is the bilinear form at relative offset 0
    (rotary embeddings make the full circuit position dependent). Weights only.
    """
    return torch.bmm(*qk_weight_factors(w_q, w_k, shape))


def heads_side_by_side(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every head's product ``X_h = A_h @ B_h`` for A (H, r, k) and B (H, k, c), laid out
    (r, H, c): ``out[:, h]`` is ``X_h`` and ``out.view(r, H * c)`` is ``[X_1 | ... | X_H]``.

    Weights and gradients: ``[M_1 | ... | M_H]`` (d x H*d); activations ``[a_1 | ... | a_H]``
    (n x H*d), the per-head writes of a token as one feature vector. The batched product writes
    straight into this layout (each head's output rows have a stride of H*c), so the
    concatenation costs no copy (a permuted copy of the stacked products took as long as the
    products themselves); the values equal ``torch.bmm(a, b)``'s bit for bit.
    """
    h, r, c = a.shape[0], a.shape[1], b.shape[2]
    out = a.new_empty(r, h, c)
    torch.bmm(a, b, out=out.permute(1, 0, 2))
    return out


# ----------------------------------------------------------------------------------------------
# Component specs: what to build per layer, and from which tensors
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentSpec:
    """One component: `simple` (a module's tensor) or a circuit, of one tensor kind."""

    type: str = "simple"  # simple | ov_circuit | qk_circuit
    kind: str = "activations"  # activations | weights | gradients
    module: str | None = None  # simple: block-module suffix, e.g. self_attn.v_proj
    heads: str = "per_head"  # circuits: per_head | concat | both

    def validate(self) -> str | None:
        """Why this spec is invalid, or None."""
        if self.type not in COMPONENT_TYPES:
            return f"type must be one of {COMPONENT_TYPES}, got {self.type!r}"
        if self.kind not in KINDS:
            return f"kind must be one of {KINDS}, got {self.kind!r}"
        if self.type == "simple" and not self.module:
            return "a simple component needs `module` (e.g. self_attn.v_proj, mlp.down_proj)"
        if self.type == "simple" and self.module == RESIDUAL and self.kind != "activations":
            return "the residual stream has activations only"
        if self.type != "simple" and self.heads not in HEAD_MODES:
            return f"heads must be one of {HEAD_MODES}, got {self.heads!r}"
        if self.type == "qk_circuit" and self.kind != "weights":
            return "the QK circuit is defined for weights only"
        return None

    @property
    def key(self) -> str:
        if self.type == "simple":
            return f"simple/{self.kind}/{self.module}"
        return f"{self.type}/{self.kind}/{self.heads}"

    @property
    def module_label(self) -> str:
        """The `module` column of the results table."""
        return {"simple": self.module, "ov_circuit": "self_attn.ov", "qk_circuit": "self_attn.qk"}[
            self.type
        ]

    @property
    def split_dependent(self) -> bool:
        return self.kind != "weights"

    def needs(self, layer: int) -> list[tuple[str, str]]:
        """(kind, canonical module) pairs this component reads at `layer`."""
        m = lambda suffix: module_name(layer, suffix)  # noqa: E731
        if self.type == "simple":
            return [(self.kind, m(self.module))]
        if self.type == "qk_circuit":
            return [("weights", m(Q_PROJ)), ("weights", m(K_PROJ))]
        v, o = m(V_PROJ), m(O_PROJ)
        if self.kind == "activations":
            return [("activations", v), ("weights", o)]
        if self.kind == "weights":
            return [("weights", v), ("weights", o)]
        return [("gradients", v), ("gradients", o), ("weights", v), ("weights", o)]


@dataclass
class ComponentValue:
    """One matrix to measure: `component` names it in the table; head is None unless per head.

    `factors` (A, B) with ``tensor = A @ B`` are kept for per-head circuits, whose rank is at
    most r = A.shape[1] (the runner takes their singular values from an r x r core); the
    stacked factors of all heads are kept for the concatenated circuit (`head_factors`).
    """

    component: str
    head: int | None
    tensor: torch.Tensor
    factors: Factors | None = None
    head_factors: Factors | None = None  # concatenated heads: tensor = [A_1 B_1 | ... | A_H B_H]
    singular_values: torch.Tensor | None = None  # set by the runner when known from factors


def build(
    spec: ComponentSpec, layer: int, get: Callable[[str, str], torch.Tensor], shape: ModelShape
) -> list[ComponentValue]:
    """The component's matrices at `layer`; `get(kind, module)` returns a loaded tensor.

    Raises :class:`~pico_analyze.load.MissingData` when an input is absent and ValueError when
    shapes disagree with the model shape.
    """
    t = {f"{kind}:{mod.rsplit('.', 1)[-1]}": get(kind, mod) for kind, mod in spec.needs(layer)}
    if spec.type == "simple":
        return [ComponentValue("simple", None, next(iter(t.values())))]
    if spec.type == "qk_circuit":
        a, b = qk_weight_factors(t["weights:q_proj"], t["weights:k_proj"], shape)
    elif spec.kind == "activations":
        a, b = ov_activation_factors(t["activations:v_proj"], t["weights:o_proj"], shape)
    elif spec.kind == "weights":
        a, b = ov_weight_factors(t["weights:v_proj"], t["weights:o_proj"], shape)
    else:
        a, b = ov_gradient_factors(
            t["gradients:v_proj"],
            t["gradients:o_proj"],
            t["weights:v_proj"],
            t["weights:o_proj"],
            shape,
        )
    heads = heads_side_by_side(a, b)  # (m, H, n): heads[:, h] is head h's matrix
    out = []
    if spec.heads in ("per_head", "both"):
        out += [ComponentValue(spec.type, h, heads[:, h], (a[h], b[h])) for h in range(a.shape[0])]
    if spec.heads in ("concat", "both"):
        concat = heads.view(heads.shape[0], -1)
        out.append(ComponentValue(f"{spec.type}_concat", None, concat, head_factors=(a, b)))
    return out
