"""signSGD (Bernstein et al., 2018): each weight moves by lr against the sign of its gradient, or of
its momentum when `momentum` > 0. An optimizer of one's own: `name: "signsgd:SignSGD"` (signsgd.yaml)."""

import torch


class SignSGD(torch.optim.Optimizer):
    """p -= lr · sign(m), with m = momentum · m + grad (m = grad when momentum is 0)."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"])  # L2 penalty, as torch.optim.SGD adds it
                if group["momentum"]:
                    m = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    grad = m.mul_(group["momentum"]).add_(grad)
                p.add_(grad.sign(), alpha=-group["lr"])
