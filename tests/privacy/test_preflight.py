"""The engine's pre-flight check: it refuses a model whose layers the engine would clip wrongly — even a layer with a
tiny share of the gradient norm — and passes supported models, leaving them untouched."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dpsynth.errors import DpsynthError
from dpsynth.models.lora import apply_lora
from dpsynth.privacy.preflight import check_clippable
from tests.conftest import tiny_llama


class _TimeMajorLM(torch.nn.Module):
    """A toy LM whose middle layer sees (token, example)-ordered rows: by shape it looks like OPT's batch-major
    folding, so only the pre-flight's comparison with a direct computation can tell it apart."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)
        self.mix = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 50)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        h = self.embed(input_ids)
        b, t, d = h.shape
        rows = torch.tanh(self.mix(h.transpose(0, 1).reshape(t * b, d)))
        return SimpleNamespace(logits=self.head(rows.reshape(t, b, d).transpose(0, 1)))


def test_preflight_refuses_a_model_the_engine_would_clip_wrongly() -> None:
    with pytest.raises(DpsynthError, match="cannot clip _TimeMajorLM correctly"):
        check_clippable(_TimeMajorLM(), torch.device("cpu"))


class _TimeMajorDownProj(torch.nn.Module):
    """Wraps a Llama MLP so that only its down projection sees (token, example)-ordered rows: a layer with a tiny
    share of the gradient norm, which a check of total norms alone let through."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp.act_fn(self.mlp.gate_proj(x)) * self.mlp.up_proj(x)
        b, t, d = h.shape
        out = self.mlp.down_proj(h.transpose(0, 1).reshape(t * b, d))
        return out.reshape(t, b, -1).transpose(0, 1)


@pytest.mark.parametrize("lora", [False, True])
def test_preflight_refuses_a_small_share_of_mixed_rows(lora: bool) -> None:
    model = tiny_llama()
    model.model.layers[-1].mlp = _TimeMajorDownProj(model.model.layers[-1].mlp)
    if lora:  # as a run does it: B = 0 at the start, so the A matrices carry no gradient unless B is randomised
        model = apply_lora(model, r=2)
    with pytest.raises(DpsynthError, match="gradient of '.*down_proj.*' differs"):
        check_clippable(model, torch.device("cpu"))


def test_preflight_passes_supported_models_and_leaves_them_untouched() -> None:
    for model in (tiny_llama(), apply_lora(tiny_llama(), r=2)):
        model.train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        rng = torch.get_rng_state()
        check_clippable(model, torch.device("cpu"))
        assert model.training and torch.equal(torch.get_rng_state(), rng)
        for n, p in model.named_parameters():
            assert p.grad is None and torch.equal(p, before[n]), n
        assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
