"""A stacked model is its members: each row's outputs and gradients are its solo model's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gdtrain.components.models import build_model
from gdtrain.core.config import validate
from gdtrain.stacked.model import StackedModel, member_losses

MODELS = [
    {"name": "mlp", "hidden_sizes": [16, 8], "activation": "tanh"},
    {"name": "linear", "bias": False},
    {"name": "linear"},
]


@pytest.mark.parametrize("model", MODELS, ids=["mlp", "linear-nobias", "linear"])
def test_each_member_gives_its_solo_models_outputs_and_gradients(model):
    cfg = validate({"model": model}, "test").model
    solos = []
    for seed in range(3):
        torch.manual_seed(seed)
        solos.append(build_model(cfg, 12, 5))
    stacked = StackedModel(cfg, solos)
    x, y = torch.randn(3, 7, 12), torch.randint(0, 5, (3, 7))  # member m's batch in row m
    arriving = []  # the gradients as backward makes them, before AccumulateGrad
    for p in stacked.params:
        p.register_hook(lambda g: arriving.append(g.is_contiguous()))
    out = stacked(x)
    member_losses("cross_entropy", out, y).sum().backward()
    for m, solo in enumerate(solos):
        assert torch.allclose(out[m], solo(x[m]), atol=1e-6)
        F.cross_entropy(solo(x[m]), y[m]).backward()
        for name, p in zip(stacked.names, stacked.params):
            grad = dict(solo.named_parameters())[name].grad
            assert torch.allclose(p.grad[m], grad, atol=1e-6), name
    assert all(arriving)  # in the weights' layout: AccumulateGrad keeps them, no strided copy (stackmodel.forward)
