"""Per-layer pieces of the clipping engine: per-example gradient norms and clipped sums.

Each handler owns the trainable parameters registered directly on one module. During the forward pass it keeps
what that module saw (activations or token ids); during the backward pass it receives the gradient of the loss
with respect to the module's output. From those two it computes, per example, the squared norm of the gradient of
its parameters, and — once the engine knows every example's clip factor — the *clipped* sum over the batch.

Two ways to get a linear layer's per-example norm, chosen per layer by cost (the book-keeping idea of Bu et al.):
- ghost norm: ||a_iᵀ g_i||² = Σ_{t,s} (a_t·a_s)(g_t·g_s), never materialising the d×p gradient; keeps a and g
  until the clip factors are known, then one matmul a·(c ⊙ g) yields the clipped sum.
- instantiation: G_i = g_iᵀ a_i by one batched matmul (same FLOPs as the ordinary weight gradient), kept as B×p×d;
  cheaper whenever d·p ≤ T·(d+p), e.g. LoRA adapters.
Norms are always computed in float32: a clip factor computed from an underestimated norm would let an example
exceed the clip bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from dpsynth.errors import DpsynthError

_FP = torch.float32


@dataclass
class _Record:
    """One call of a module in the current micro-batch: what went in, and the gradient that came back."""

    inputs: torch.Tensor
    grad_output: torch.Tensor | None = None


class Grouping:
    """Which privacy unit each row of a micro-batch belongs to (user-level DP: a user's records are one unit).

    A unit's gradient is the sum of its rows' gradients, so its ghost norm is the ghost norm of its rows laid end
    to end along the position axis: (U, K·T, F) with zero rows where a unit has fewer than K records (zeros add
    nothing to either Gram matrix). With `groups=None` every row is its own unit and nothing is copied.
    """

    def __init__(self, batch_size: int, groups: torch.Tensor | None = None) -> None:
        self.batch_size = batch_size
        self.groups = groups
        if groups is None:
            self.num_units = batch_size
            return
        if groups.shape != (batch_size,):
            raise ValueError("groups must give one unit index per row")
        self.num_units = int(groups.max()) + 1 if batch_size else 0
        counts = torch.bincount(groups, minlength=self.num_units)
        self.max_rows = int(counts.max()) if batch_size else 0
        order = torch.argsort(groups, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(groups)
        slot[order] = torch.arange(batch_size, device=groups.device) - starts[groups[order]]
        self.slot = slot

    def concat_positions(self, x: torch.Tensor, fill: float = 0) -> torch.Tensor:
        """(B, T, ...) → (U, K·T, ...): each unit's rows one after the other."""
        if self.groups is None:
            return x
        out = x.new_full((self.num_units, self.max_rows, *x.shape[1:]), fill)
        out[self.groups, self.slot] = x
        return out.reshape(self.num_units, self.max_rows * x.shape[1], *x.shape[2:])

    def sum_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) → (U, ...): per-unit sums of per-row quantities (instantiated gradients)."""
        if self.groups is None:
            return x
        out = x.new_zeros((self.num_units, *x.shape[1:]))
        return out.index_add_(0, self.groups, x)

    def to_rows(self, per_unit: torch.Tensor) -> torch.Tensor:
        return per_unit if self.groups is None else per_unit[self.groups]


@dataclass
class LayerHandler:
    """Base class: owns a module's trainable parameters and the records of its calls in one micro-batch."""

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter]
    records: list[_Record] = field(default_factory=list)
    # A Linear/Embedding subclass with its own forward: checked, on its first call, to compute what its base class
    # does (Falcon's does; OPT's positional embedding and Gemma's scaled one do not), refused otherwise.
    check_forward: bool = False

    kind = "base"

    def reset(self) -> None:
        # Empty each record, not just the list: the backward hook of the layer's output still holds the record, and
        # autograd keeps that hook as long as anything references the loss (a caller's `losses` variable, say) —
        # without this, every ghost layer's input and output gradient would outlive the step.
        for rec in self.records:
            rec.inputs = None  # type: ignore[assignment]
            rec.grad_output = None
        self.records.clear()

    def capture_input(self, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
        return inputs

    def on_grad(self, record: _Record) -> None:
        """Called from the backward hook once the record's output gradient is known."""

    def norm_sq(self, grouping: Grouping, grams: GramCache | None = None) -> torch.Tensor:
        """Squared gradient norm of each privacy unit, shape (U,). `grams` shares Gram matrices between layers."""
        raise NotImplementedError

    def add_clipped(self, clip: torch.Tensor, sums: dict[nn.Parameter, torch.Tensor]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


def _flat3(x: torch.Tensor) -> torch.Tensor:
    """View as (batch, positions, features): a linear layer applies to every position independently."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-1])


_CHUNK_ELEMENTS = 1 << 24  # float32 copies of bf16 activations are made this many elements (64 MB) at a time


def _row_chunks(batch: int, elements_per_row: int) -> list[slice]:
    """Batch slices whose float32 copies stay under _CHUNK_ELEMENTS: under bf16 an LM head's output gradient
    (B×T×vocab) converted whole would be a transient as large as a tenth of the step's memory."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, elements_per_row))
    return [slice(i, i + rows) for i in range(0, batch, rows)]


def _gram(x: torch.Tensor) -> torch.Tensor:
    """x·xᵀ per example in float32 (norms must never be underestimated by low-precision rounding)."""
    if x.dtype == _FP:
        return torch.bmm(x, x.transpose(1, 2))
    out = torch.empty(x.shape[0], x.shape[1], x.shape[1], dtype=_FP, device=x.device)
    for rows in _row_chunks(x.shape[0], x[0].numel()):
        xc = x[rows].to(_FP)
        torch.bmm(xc, xc.transpose(1, 2), out=out[rows])
    return out


def _clipped_product(a: torch.Tensor, g: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    """Σ_i c_i g_iᵀ a_i (p×d) in float32, scaling whichever side is narrower (for an LM head, a: d ≪ g: vocab);
    low-precision inputs are converted a chunk of examples at a time."""
    p, d = g.shape[-1], a.shape[-1]
    full_precision = a.dtype == _FP and g.dtype == _FP
    chunks = [slice(None)] if full_precision else _row_chunks(a.shape[0], a.shape[1] * (p + d))
    total: torch.Tensor | None = None
    for rows in chunks:
        ac, gc, cc = a[rows].to(_FP), g[rows].to(_FP), clip[rows][:, None, None]
        if d <= p:
            ac = ac * cc
        else:
            gc = gc * cc
        part = gc.reshape(-1, p).t() @ ac.reshape(-1, d)
        total = part if total is None else total.add_(part)
    assert total is not None
    return total


class GramCache:
    """Gram matrices a·aᵀ of layer inputs for one backward pass, shared by layers reading the same tensor.

    q/k/v projections (and gate/up in a gated MLP) all read one normalised hidden state: without the cache its
    B×T×T Gram matrix would be computed three (two) times. Keys are (storage pointer, shape, strides, dtype) of the
    inputs; every input stays alive until the clip factors are known, so a key cannot be reused by another tensor
    within the pass.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def key(tensors: list[torch.Tensor]) -> tuple:
        return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) for t in tensors)

    def gram(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = _gram(make())
        return self._cache[key]


def _accumulate(sums: dict[nn.Parameter, torch.Tensor], param: nn.Parameter, value: torch.Tensor) -> None:
    value = value.to(_FP)
    if param in sums:
        sums[param].add_(value)
    else:
        sums[param] = value.contiguous()


class LinearHandler(LayerHandler):
    """nn.Linear (weight p×d), GPT-2's Conv1D (weight d×p, `transposed`), and LoRA's A/B matrices (plain Linear)."""

    kind = "linear"

    def __init__(self, name: str, module: nn.Module, params: dict[str, nn.Parameter], *, transposed: bool,
                 seq_len_hint: int = 128, force_ghost: bool = False) -> None:
        super().__init__(name, module, params)
        self.transposed = transposed
        self.weight = params.get("weight")
        self.bias = params.get("bias")
        w = module.weight
        d, p = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
        self.in_features, self.out_features = d, p
        self.force_ghost = force_ghost
        self.ghost = force_ghost or d * p > seq_len_hint * (d + p)
        self._per_example: torch.Tensor | None = None  # B×p×d when instantiating
        self._bias_per_example: torch.Tensor | None = None

    def describe(self) -> str:
        return "linear/ghost" if self.ghost else "linear/instantiate"

    def set_seq_len(self, seq_len: int) -> None:
        """Re-decide ghost vs instantiation for the micro-batch's actual length (cost depends on T)."""
        if not self.force_ghost:
            d, p = self.in_features, self.out_features
            self.ghost = d * p > seq_len * (d + p)

    def reset(self) -> None:
        super().reset()
        self._per_example = None
        self._bias_per_example = None

    def on_grad(self, record: _Record) -> None:
        g = _flat3(record.grad_output)
        if self.bias is not None:
            gb = g.sum(1, dtype=_FP)
            self._bias_per_example = gb if self._bias_per_example is None else self._bias_per_example + gb
        if self.weight is not None and not self.ghost:
            a = _flat3(record.inputs)
            per_ex = torch.bmm(g.transpose(1, 2).to(_FP), a.to(_FP))  # B×p×d
            self._per_example = per_ex if self._per_example is None else self._per_example + per_ex
            record.inputs = None  # type: ignore[assignment]  # no longer needed: free it now
            record.grad_output = None
        elif self.weight is None:
            record.inputs = None  # type: ignore[assignment]
            record.grad_output = None

    def _ghost_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All calls of this module concatenated along positions: Σ_k a_kᵀ g_k = [a_1;a_2]ᵀ [g_1;g_2]."""
        recs = [r for r in self.records if r.grad_output is not None]
        if len(recs) == 1:  # the common case: no copy
            return _flat3(recs[0].inputs), _flat3(recs[0].grad_output)
        a = torch.cat([_flat3(r.inputs) for r in recs], dim=1)
        g = torch.cat([_flat3(r.grad_output) for r in recs], dim=1)
        return a, g

    def _has_ghost_data(self) -> bool:
        return any(r.grad_output is not None for r in self.records)

    def norm_sq(self, grouping: Grouping, grams: GramCache | None = None) -> torch.Tensor:
        out = torch.zeros(grouping.num_units, dtype=_FP, device=self.module.weight.device)
        if self.weight is not None:
            if self.ghost:
                if self._has_ghost_data():
                    a, g = self._ghost_tensors()
                    g = grouping.concat_positions(g)
                    if grams is None:
                        gram_a = _gram(grouping.concat_positions(a))
                    else:
                        key = GramCache.key([r.inputs for r in self.records if r.grad_output is not None])
                        gram_a = grams.gram(key, lambda: grouping.concat_positions(a))
                    out += (gram_a * _gram(g)).sum((1, 2))
            elif self._per_example is not None:
                out += grouping.sum_rows(self._per_example).pow(2).sum((1, 2))
        if self._bias_per_example is not None:
            out += grouping.sum_rows(self._bias_per_example).pow(2).sum(1)
        return out

    def add_clipped(self, clip: torch.Tensor, sums: dict[nn.Parameter, torch.Tensor]) -> None:
        if self.weight is not None:
            if self.ghost:
                if self._has_ghost_data():
                    a, g = self._ghost_tensors()
                    w = _clipped_product(a, g, clip)  # p×d
                    _accumulate(sums, self.weight, w.t() if self.transposed else w)
            elif self._per_example is not None:
                w = torch.einsum("b,bpd->pd", clip, self._per_example)
                _accumulate(sums, self.weight, w.t() if self.transposed else w)
        if self._bias_per_example is not None:
            _accumulate(sums, self.bias, clip @ self._bias_per_example)


class EmbeddingHandler(LayerHandler):
    """nn.Embedding: the per-example gradient is Σ_t onehot(x_t) g_tᵀ, so its squared norm is
    Σ_{t,s} [x_t = x_s] (g_t·g_s) — O(T²·d) work, never a V×d tensor per example (≈450 MB for SmolLM2)."""

    kind = "embedding"

    def __init__(self, name: str, module: nn.Embedding, params: dict[str, nn.Parameter]) -> None:
        super().__init__(name, module, params)
        self.weight = params["weight"]
        if module.max_norm is not None:
            raise UnsupportedLayerError(name, module, "embeddings with max_norm renormalise weights in place")

    def capture_input(self, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
        # Position ids are often (1, T) and broadcast over the batch: per-example gradients need them per example.
        if inputs.dim() >= 1 and inputs.shape[0] == 1 and batch_size > 1:
            inputs = inputs.expand(batch_size, *inputs.shape[1:])
        return inputs

    def ids_and_grads(self) -> tuple[torch.Tensor, torch.Tensor]:
        recs = [r for r in self.records if r.grad_output is not None]
        ids = torch.cat([r.inputs.reshape(r.inputs.shape[0], -1) for r in recs], dim=1)
        g = torch.cat([_flat3(r.grad_output) for r in recs], dim=1).to(_FP)
        pad = self.module.padding_idx
        if pad is not None:  # nn.Embedding never updates the padding row
            g = g * (ids != pad).unsqueeze(-1).to(_FP)
        return ids, g

    def norm_sq(self, grouping: Grouping, grams: GramCache | None = None) -> torch.Tensor:
        if not any(r.grad_output is not None for r in self.records):
            return torch.zeros(grouping.num_units, dtype=_FP, device=self.weight.device)
        ids, g = self.ids_and_grads()
        ids, g = grouping.concat_positions(ids, fill=-1), grouping.concat_positions(g)
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(_FP)
        return (same * _gram(g)).sum((1, 2))

    def add_clipped(self, clip: torch.Tensor, sums: dict[nn.Parameter, torch.Tensor]) -> None:
        if not any(r.grad_output is not None for r in self.records):
            return
        ids, g = self.ids_and_grads()
        w = torch.zeros(self.weight.shape, dtype=_FP, device=self.weight.device)
        w.index_add_(0, ids.reshape(-1), (g * clip[:, None, None]).reshape(-1, g.shape[-1]))
        _accumulate(sums, self.weight, w)


class TiedEmbeddingCross:
    """The cross term of a weight shared by an input embedding and an output projection (tied embeddings).

    The per-example gradient is G = Σ_t onehot(x_t) e_tᵀ + Σ_s g_s h_sᵀ, so ||G||² needs, besides each part's norm,
    2·<E, L> = 2·Σ_{t,s} g_s[x_t] (e_t·h_s): a gather of the output gradient at the input token ids and a T×T
    matmul. Opacus' ghost clipping refuses this case; getting it wrong would under-clip every example.
    """

    def __init__(self, embedding: EmbeddingHandler, projection: LinearHandler) -> None:
        if projection.transposed:
            raise UnsupportedLayerError(projection.name, projection.module, "a transposed tied projection")
        self.embedding = embedding
        self.projection = projection

    def norm_sq(self, grouping: Grouping) -> torch.Tensor:
        emb, proj = self.embedding, self.projection
        if not any(r.grad_output is not None for r in emb.records) or not proj._has_ghost_data():
            return torch.zeros(grouping.num_units, dtype=_FP, device=emb.weight.device)
        ids, e = emb.ids_and_grads()  # B×T, B×T×d
        h, g = proj._ghost_tensors()  # B×S×d, B×S×V
        # Padding slots get id 0 with zero gradients: they add nothing to the cross term.
        ids, e = grouping.concat_positions(ids, fill=0), grouping.concat_positions(e)
        h, g = grouping.concat_positions(h), grouping.concat_positions(g)
        idx = ids.unsqueeze(1).expand(g.shape[0], g.shape[1], ids.shape[1])
        g_at_ids = torch.gather(g, 2, idx).to(_FP)  # B×S×T: g_s[x_t] (gathered first: never a float32 B×S×V)
        k = torch.bmm(e, h.to(_FP).transpose(1, 2))  # B×T×S: e_t·h_s
        return 2.0 * (g_at_ids.transpose(1, 2) * k).sum((1, 2))


class NormHandler(LayerHandler):
    """LayerNorm / RMSNorm and similar small per-position modules: per-example gradients instantiated exactly with
    torch.func (vmap of a vector-Jacobian product over the batch). Their parameters are O(d), so B×d is cheap, and
    recomputing the module's own forward keeps every variant (GPT-2 LayerNorm, Llama RMSNorm, Gemma's 1+w) right
    without re-deriving its formula."""

    kind = "norm/vmap"

    def __init__(self, name: str, module: nn.Module, params: dict[str, nn.Parameter],
                 suspend_hooks: Callable[[], object]) -> None:
        super().__init__(name, module, params)
        self._suspend_hooks = suspend_hooks
        self._per_example: dict[str, torch.Tensor] | None = None

    def reset(self) -> None:
        super().reset()
        self._per_example = None

    def on_grad(self, record: _Record) -> None:
        """Instantiate this call's per-example gradients (B×d) right away and drop its B×T×d input and output
        gradient: holding them for 60 norm layers until the clip factors are known would cost more memory than
        the per-example gradients themselves."""
        names = list(self.params)
        frozen = {n: p for n, p in self.module.named_parameters(recurse=False) if n not in self.params}
        frozen.update(dict(self.module.named_buffers(recurse=False)))

        def one(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
            def f(*ps: torch.Tensor) -> torch.Tensor:
                state = {**dict(zip(names, ps, strict=True)), **frozen}
                return functional_call(self.module, state, (x.unsqueeze(0),))

            _, pullback = vjp(f, *(self.params[n].detach() for n in names))
            return pullback(g.unsqueeze(0).to(x.dtype))

        with self._suspend_hooks(), torch.enable_grad():
            grads = vmap(one)(record.inputs.detach(), record.grad_output)
        total = self._per_example if self._per_example is not None else {}
        for n, gr in zip(names, grads, strict=True):
            gr = gr.to(_FP)
            total[n] = gr if n not in total else total[n] + gr
        self._per_example = total
        record.inputs = None  # type: ignore[assignment]
        record.grad_output = None

    def norm_sq(self, grouping: Grouping, grams: GramCache | None = None) -> torch.Tensor:
        out = torch.zeros(grouping.num_units, dtype=_FP, device=next(iter(self.params.values())).device)
        for gr in (self._per_example or {}).values():
            out += grouping.sum_rows(gr).reshape(grouping.num_units, -1).pow(2).sum(1)
        return out

    def add_clipped(self, clip: torch.Tensor, sums: dict[nn.Parameter, torch.Tensor]) -> None:
        for n, gr in (self._per_example or {}).items():
            _accumulate(sums, self.params[n], torch.einsum("b,b...->...", clip, gr))


class UnsupportedLayerError(DpsynthError):
    """A trainable layer whose per-example gradient the engine cannot compute: refused, never left unclipped."""

    def __init__(self, name: str, module: nn.Module, why: str = "") -> None:
        reason = f" ({why})" if why else ""
        if ".lora_" in name:  # already LoRA: the way out is to leave that projection's module without adapters
            fix = f"leave '{name.split('.lora_')[0].rsplit('.', 1)[-1]}' out of --lora-targets."
        else:
            fix = "fine-tune with LoRA (--finetune lora), or freeze that layer (requires_grad=False) from Python."
        super().__init__(
            f"dpsynth cannot clip per-example gradients of layer '{name}' ({type(module).__name__}){reason}; {fix}"
        )
        self.layer_name = name


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D (transformers.pytorch_utils), recognised without importing transformers into privacy/."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return True
    name = type(module).__name__
    small = all(p.dim() <= 1 for p in module.parameters(recurse=False))
    return small and (name.endswith("RMSNorm") or name.endswith("LayerNorm"))
