"""The clipping engine: Σ_i clip(∇ℓ_i, C) for a micro-batch in one forward and one backward pass.

How it works (book-keeping style, after Bu et al.):
- Every trainable parameter belongs to a handler (see `layers.py`); a parameter no handler understands is refused
  with the layer's name before the run writes anything (the pre-flight `check_clippable`), never left unclipped;
  so are a Linear/Embedding subclass computing something else and a layer whose rows are not examples
  (batch-major folded rows are unfolded).
- While the engine is attached, the handled parameters have `requires_grad=False`, so autograd computes only the
  gradients flowing *between* layers, never the (unclipped) parameter gradients. Forward hooks keep each layer's
  input and make its output part of the graph; tensor hooks catch the gradient reaching that output.
- After the backward pass each handler reports per-example squared norms, the engine forms clip factors
  c_i = min(1, C/‖g_i‖), and each handler adds its clipped sum into float32 accumulators.

Privacy-safety by construction: the only gradients the optimizer ever sees are the accumulators, and the only way
into them is through a clip factor. A use of a weight that bypasses its module's forward cannot add unclipped
signal: it adds nothing at all (and the brute-force tests would show the missing part).

Noise is added once per *logical* step (`noisy_average`), after however many micro-batches, and the sum is divided
by the expected batch size q·N — not the realised one, which is itself private.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from dpsynth.privacy.layers import (
    EmbeddingHandler,
    GramCache,
    Grouping,
    LayerHandler,
    LinearHandler,
    NormHandler,
    TiedEmbeddingCross,
    UnsupportedLayerError,
    _Record,
    is_conv1d,
    is_norm,
)

_EPS = 1e-6


class NoiseSource(Protocol):
    def add_normal_(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        """Add independent N(0, std²) noise to every element of a float32 tensor, in place."""
        ...


class ClippingEngine:
    """Per-example clipping for any causal LM built from Linear / Conv1D / Embedding / LayerNorm / RMSNorm."""

    def __init__(self, model: nn.Module, clip_norm: float, *, seq_len_hint: int = 128) -> None:
        if not clip_norm > 0:
            raise ValueError("clip_norm must be positive")
        self.model = model
        self.clip_norm = float(clip_norm)
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.handlers: list[LayerHandler] = []
        self.cross_terms: list[TiedEmbeddingCross] = []
        self._discover(seq_len_hint)
        self.summed: dict[nn.Parameter, torch.Tensor] = {}
        self.units_in_step = 0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False
        self._suspended = False
        self._batch_size = 0
        self._seq_len = 0

    # ------------------------------------------------------------------ discovery
    def _discover(self, seq_len_hint: int) -> None:
        trainable = {id(p) for p in self.params}
        owners: dict[int, list[LayerHandler]] = {}
        for name, module in self.model.named_modules():
            own = {n: p for n, p in module._parameters.items() if p is not None and id(p) in trainable}
            if not own:
                continue
            handler = self._make_handler(name or "<model>", module, own, seq_len_hint)
            self.handlers.append(handler)
            for p in own.values():
                owners.setdefault(id(p), []).append(handler)
        for p in self.params:
            users = owners.get(id(p), [])
            if len(users) == 2:
                emb = next((h for h in users if isinstance(h, EmbeddingHandler)), None)
                lin = next((h for h in users if isinstance(h, LinearHandler)), None)
                if emb is None or lin is None:
                    raise UnsupportedLayerError(users[1].name, users[1].module, "a weight shared between layers")
                lin.force_ghost = lin.ghost = True
                self.cross_terms.append(TiedEmbeddingCross(emb, lin))
            elif len(users) > 2:
                raise UnsupportedLayerError(users[2].name, users[2].module, "a weight shared by 3+ layers")

    def _make_handler(self, name: str, module: nn.Module, own: dict[str, nn.Parameter],
                      seq_len_hint: int) -> LayerHandler:
        handler = self._handler_for(name, module, own, seq_len_hint)
        # The per-example formulas assume the base class's forward; a subclass's own is checked on its first call.
        handler.check_forward = any(isinstance(module, base) and type(module).forward is not base.forward
                                    for base in (nn.Linear, nn.Embedding))
        return handler

    def _handler_for(self, name: str, module: nn.Module, own: dict[str, nn.Parameter],
                     seq_len_hint: int) -> LayerHandler:
        if isinstance(module, nn.Linear):
            return LinearHandler(name, module, own, transposed=False, seq_len_hint=seq_len_hint)
        if is_conv1d(module):
            return LinearHandler(name, module, own, transposed=True, seq_len_hint=seq_len_hint)
        if isinstance(module, nn.Embedding):
            return EmbeddingHandler(name, module, own)
        if is_norm(module):
            return NormHandler(name, module, own, self._suspend)
        raise UnsupportedLayerError(name, module)

    def describe(self) -> dict[str, str]:
        """Which method each layer uses (for run.json and the benchmark)."""
        return {h.name: h.describe() for h in self.handlers}

    # ------------------------------------------------------------------ hooks
    def attach(self) -> ClippingEngine:
        if self._hooks:
            return self
        for h in self.handlers:
            self._hooks.append(h.module.register_forward_hook(self._make_hook(h), with_kwargs=True))
        for p in self.params:
            p.requires_grad_(False)
        return self

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for p in self.params:
            p.requires_grad_(True)

    @contextmanager
    def _suspend(self) -> Iterator[None]:
        prev, self._suspended = self._suspended, True
        try:
            yield
        finally:
            self._suspended = prev

    def _make_hook(self, handler: LayerHandler):  # noqa: ANN202 - torch hook signature
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> object:
            if not self._active or self._suspended or not torch.is_grad_enabled():
                return None
            if not isinstance(output, torch.Tensor):
                raise UnsupportedLayerError(handler.name, module, "its output is not a single tensor")
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            if handler.check_forward:
                _check_base_forward(handler, x, output)
                handler.check_forward = False
            b, t = self._batch_size, self._seq_len
            inputs = handler.capture_input(x.detach(), b)
            if output.shape[0] == 1 and b > 1 and isinstance(handler, EmbeddingHandler):
                output = output.expand(b, *output.shape[1:])
            # Some models (OPT) fold (batch, tokens) into one dimension around their MLP: batch-major rows are
            # unfolded back. Time-major folding looks the same by shape: the pre-flight check (check_clippable)
            # compares each example's gradient with autograd, a fully masked example included, and refuses it.
            folded = (t > 1 and inputs.dim() == 2 and inputs.shape[0] == b * t and output.dim() == 2
                      and output.shape[0] == b * t)
            if folded:
                inputs = inputs.unflatten(0, (b, t))
            elif inputs.dim() == 0 or inputs.shape[0] != b or output.shape[0] != b:
                # Rows would be taken for examples: per-row norms would clip nothing per example. Refuse instead.
                raise UnsupportedLayerError(handler.name, module, f"its input is not batch-first: shape "
                                            f"{tuple(inputs.shape)} for a micro-batch of {b}")
            rec = _Record(inputs)
            handler.records.append(rec)
            if not output.requires_grad:
                # Nothing upstream trains: make the output a leaf so the backward pass reaches this layer.
                output = output.detach().requires_grad_(True)

            def on_grad(grad: torch.Tensor) -> None:
                rec.grad_output = grad.detach().unflatten(0, (b, t)) if folded else grad.detach()
                handler.on_grad(rec)

            output.register_hook(on_grad)
            return output

        return hook

    # ------------------------------------------------------------------ per micro-batch
    @contextmanager
    def microbatch(self, batch_size: int, seq_len: int) -> Iterator[None]:
        """Forward pass context for one physical micro-batch of `batch_size` examples."""
        if not self._hooks:
            raise RuntimeError("attach() the engine before training")
        for h in self.handlers:
            h.reset()
            if isinstance(h, LinearHandler):
                h.set_seq_len(seq_len)
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def backward(self, per_example_loss: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Backpropagate Σ_i ℓ_i, clip each privacy unit's gradient to C, add the clipped sum to the accumulators.

        `groups[i]` is the unit (0…U-1) of row i when a unit holds several rows (user-level DP); all rows of a
        unit must be in this micro-batch. Returns each unit's gradient norm before clipping (private: for tests
        and debugging, never for logs).
        """
        norms, grouping = self.backward_norms(per_example_loss, groups)
        clip = grouping.to_rows((self.clip_norm / (norms + _EPS)).clamp(max=1.0))
        for h in self.handlers:
            h.add_clipped(clip, self.summed)
            h.reset()
        self.units_in_step += grouping.num_units
        return norms

    def backward_norms(self, per_example_loss: torch.Tensor,
                       groups: torch.Tensor | None = None) -> tuple[torch.Tensor, Grouping]:
        """The backward pass and each unit's gradient norm; the layers keep what they recorded until `backward`
        consumes it or `release()` drops it (the pre-flight check reads single rows' gradients in between)."""
        b = per_example_loss.shape[0]
        if b != self._batch_size:
            raise ValueError(f"expected {self._batch_size} per-example losses, got {b}")
        grouping = Grouping(b, None if groups is None else groups.to(per_example_loss.device))
        per_example_loss.sum().backward()
        norm_sq = torch.zeros(grouping.num_units, dtype=torch.float32, device=per_example_loss.device)
        grams = GramCache()
        for h in self.handlers:
            norm_sq += h.norm_sq(grouping, grams).to(norm_sq.device)
        del grams
        for cross in self.cross_terms:
            norm_sq += cross.norm_sq(grouping).to(norm_sq.device)
        return norm_sq.clamp_min(0).sqrt(), grouping

    def row_gradient(self, row: int, device: torch.device) -> dict[nn.Parameter, torch.Tensor]:
        """One row's unclipped gradient after `backward_norms`, computed the way clipped sums are (a one-hot clip
        vector): what the pre-flight check compares with autograd. Never used in training."""
        one_hot = torch.zeros(self._batch_size, dtype=torch.float32, device=device)
        one_hot[row] = 1.0
        sums: dict[nn.Parameter, torch.Tensor] = {}
        for h in self.handlers:
            h.add_clipped(one_hot, sums)
        return sums

    def release(self) -> None:
        """Drop what the layers recorded (after `backward_norms` without `backward`)."""
        for h in self.handlers:
            h.reset()

    # ------------------------------------------------------------------ per logical step
    def clipped_sum(self, param: nn.Parameter) -> torch.Tensor:
        """Σ_i clip(g_i) for one parameter so far in this logical step (zeros if nothing contributed)."""
        s = self.summed.get(param)
        return s if s is not None else torch.zeros(param.shape, dtype=torch.float32, device=param.device)

    def noisy_average(self, noise: NoiseSource | None, noise_multiplier: float, expected_batch_size: float,
                      *, all_reduce: Callable[[list[torch.Tensor]], None] | None = None,
                      broadcast: Callable[[list[torch.Tensor]], None] | None = None,
                      adds_noise: bool = True) -> None:
        """Set `p.grad = (Σ clip(g_i) + N(0, σ²C²)) / (q·N)` for every trainable parameter, once per logical step.

        With data parallelism, `all_reduce` sums the clipped sums across ranks in place *before* the noise; only
        the rank with `adds_noise` (rank 0) adds a draw, and `broadcast` then copies its result to every rank — so
        the noise enters exactly once, not once per rank, and any noise source (secure too) works.
        `noise=None` is only for tests that check the clipped sum itself.
        """
        if not expected_batch_size > 0:
            raise ValueError("expected_batch_size must be positive")
        std = noise_multiplier * self.clip_norm
        totals = []
        for p in self.params:
            total = self.summed.pop(p, None)
            if total is None:  # no example touched it (e.g. an empty Poisson batch): noise alone
                total = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            totals.append(total)
        if all_reduce is not None:
            all_reduce(totals)
        if adds_noise and noise is not None and std > 0:
            for total in totals:
                noise.add_normal_(total, std)
        if broadcast is not None:
            broadcast(totals)
        for p, total in zip(self.params, totals, strict=True):
            p.grad = total.div_(expected_batch_size).to(p.dtype)
        self.summed.clear()
        self.units_in_step = 0


def _check_base_forward(handler: LayerHandler, x: torch.Tensor, output: torch.Tensor) -> None:
    """Refuse a Linear/Embedding subclass whose forward is not its base class's computation on the input it is
    called with: the engine would compute per-example gradients of the wrong function (OPT's positional embedding
    is called with the attention mask and looks up positions derived from it; Gemma's scales the rows it returns).
    The tolerance allows low-precision rounding, not a different function."""
    module = handler.module
    with torch.no_grad():
        if isinstance(module, nn.Embedding):
            ref = (torch.nn.functional.embedding(x, module.weight, module.padding_idx)
                   if not x.is_floating_point() else None)
            base = "nn.Embedding"
        else:
            ref = torch.nn.functional.linear(x, module.weight, module.bias)
            base = "nn.Linear"
        same = (ref is not None and ref.shape == output.shape
                and torch.allclose(output.float(), ref.float(), rtol=2e-2,
                                   atol=2e-2 * float(ref.float().abs().max()) + 1e-6))
    if not same:
        raise UnsupportedLayerError(handler.name, module, f"its forward computes something other than {base}'s on "
                                    "its input, so its per-example gradient cannot be derived from it")
