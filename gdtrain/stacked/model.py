"""M models of one architecture as one: each parameter a (M, *shape) stack, each layer one batched matmul.

Member m's weights are the ones its solo run starts from (the same models.build_model after the same
seed), stacked in the layout of torch.func.stack_module_state. A forward takes (M, B, D) inputs,
member m's batch in row m, and gives (M, B, out). Dropout draws member m's masks from its own
generator (`generators[m]`), in the shape and order its solo run draws them (B, hidden) from torch's
global generator, so its masks are its solo run's whatever group it trains in.
Batched matmuls (torch.baddbmm), feature-major, were chosen over vmap(functional_call(...)): vmap's
linear, like x @ W.mT, hands each weight's gradient back transposed, and AccumulateGrad copies it into
the weight's layout, a strided pass that costs more than the matmul it follows; vmap also adds its
dispatch to every call (benchmarks/stackmodel.py measures the three). Losses come back per member,
(M,), so the sum's backward gives each member exactly the gradient of its own mean loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdtrain.components.models import ACTIVATIONS
from gdtrain.core.config import LinearModel, MLPModel


class StackedModel:
    """The layers of `models` (built by models.build_model from one config, with the members' seeds), stacked."""

    def __init__(self, cfg: LinearModel | MLPModel, models: Sequence[nn.Module]):
        self.names = [name for name, _ in models[0].named_parameters()]
        self.params = [
            torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
            for name in self.names
        ]
        bias = not isinstance(cfg, LinearModel) or cfg.bias
        self.layers = [
            (self.params[i], self.params[i + 1] if bias else None) for i in range(0, len(self.params), 2 if bias else 1)
        ]
        hidden = isinstance(cfg, MLPModel)
        self.activation = ACTIVATIONS[cfg.activation]() if hidden else None
        self.dropout = cfg.dropout if hidden else 0.0
        self.training = True
        # member m's dropout draws: seeded from torch's here; the loop (stack) gives each its solo run's
        device = self.params[0].device
        self.generators = [
            torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ()))) for _ in range(len(models))
        ]

    @property
    def members(self) -> int:
        return len(self.params[0])

    def forward(self, x: Tensor) -> Tensor:
        """(M, B, D) → (M, B, out): every member's model on its own batch."""
        # Feature-major: h = W @ x.mT, (M, features, B). The weight's gradient, gh @ x, then comes out
        # (M, out, in) like the weight, which autograd keeps as it is; from x @ W.mT it would come out
        # transposed and AccumulateGrad would copy it into the weight's layout, a strided pass slower
        # than the matmuls (benchmarks/stackmodel.py: twice the step at batch 32 for M >= 8).
        h = x.mT
        for i, (weight, bias) in enumerate(self.layers):
            if i > 0:
                h = self.activation(h)
                if self.dropout > 0 and self.training:
                    h = h * self._masks(h)
            h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, h)
        return h.mT

    __call__ = forward

    def _masks(self, h: Tensor) -> Tensor:
        """(M, H, B) dropout masks scaled by 1 / (1 - p): member m's drawn as its solo run's F.dropout
        draws its own, an (B, H) bernoulli from its generator, then laid out feature-major."""
        keep = 1 - self.dropout
        m, features, batch = h.shape
        masks = [
            torch.empty(batch, features, dtype=h.dtype, device=h.device).bernoulli_(keep, generator=g)
            for g in self.generators
        ]
        return torch.stack(masks).div_(keep).mT  # (M, H, B)

    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        """Member m's weights as its solo model's state_dict (copies)."""
        return {name: p[m].detach().clone() for name, p in zip(self.names, self.params)}

    @torch.no_grad()
    def load_member_state_dict(self, m: int, state: dict[str, Tensor]) -> None:
        """Put a solo model's state_dict into row m."""
        if set(state) != set(self.names):
            raise ValueError(f"expected the weights {self.names}, got {sorted(state)}")
        for name, p in zip(self.names, self.params):
            p[m].copy_(state[name])


def member_losses(loss: str, out: Tensor, y: Tensor) -> Tensor:
    """(M,) each member's mean loss (losses.LOSSES[loss] of its own rows); out (M, B, C), y (M, B[, T])."""
    m, b = out.shape[:2]
    if loss == "cross_entropy":
        each = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
    elif loss == "bce":
        each = F.binary_cross_entropy_with_logits(out.squeeze(2), y.to(out.dtype), reduction="none")
    else:
        each = F.mse_loss(out, y, reduction="none")
    return each.reshape(m, b, -1).mean(dim=(1, 2))


def member_correct(loss: str, out: Tensor, y: Tensor) -> Tensor:
    """(M,) correct predictions of each member in its batch (losses.count_correct per row)."""
    predicted = (out.squeeze(2) > 0).long() if loss == "bce" else out.argmax(2)
    return (predicted == y).sum(1)
