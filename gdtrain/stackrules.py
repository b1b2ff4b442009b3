"""torch.optim's update rules on rows of stacked members, each setting an (m,) column per member.

Each rule is torch/optim/<name>.py's `_single_tensor_<name>` (the `foreach=False` kernel) op for op,
with the floats that torch takes per param group (lr, momentum, betas, eps, ...) as (m,) columns
broadcast over a parameter's dims. torch computes its per-step scalars (lr / bias correction,
1 - beta, the Adagrad decayed lr) in Python floats and the kernel rounds them to the parameter's
dtype; here they are computed in float64 and cast once, which rounds the same way. Which branch a
rule takes (momentum on, nesterov, centered, amsgrad) is one per call: members differing in those
are different kinds (stackopt.switches). tests/test_stackopt.py proves each against torch.optim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rows:
    """One kind's members for one step, as views of the stack or gathered copies; updated in place."""

    params: list[Tensor]  # (m, *shape) per parameter tensor
    grads: list[Tensor]  # the same shapes; never written
    state: dict[str, list[Tensor]]  # torch's state names (exp_avg, sum, ...) -> (m, *shape) per parameter
    hypers: dict[str, Tensor]  # (m,) float64: the config's settings, betas as beta1 and beta2
    lr: Tensor  # (m,) float64: this step's lr
    step: Tensor  # (m,) float64: steps taken, this one included
    switches: tuple[bool, ...]  # the formula's branches, stackopt.switches
    decay: bool  # some member has weight_decay != 0 (torch skips the op at 0; adding 0·p is the same)
    first: bool  # the kind's first step (SGD's momentum buffer starts as the gradient)


def _cast(like: Tensor, **values: Tensor) -> dict[str, Tensor]:
    """(m,) float64 values in the parameters' dtype and device, cast once per step."""
    return {k: v.to(like.device, like.dtype) for k, v in values.items()}


def col(x: Tensor, like: Tensor) -> Tensor:
    """An (m,) vector as an (m, 1, ..., 1) column that broadcasts over `like`'s dims."""
    return x.view(-1, *[1] * (like.dim() - 1))


def sgd(r: Rows) -> None:
    """torch.optim.SGD: momentum, dampening, nesterov, weight_decay per member."""
    momentum, nesterov = r.switches
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], mom=r.hypers["momentum"],
              keep=1 - r.hypers["dampening"], lr=-r.lr)
    for i, (p, g) in enumerate(zip(r.params, r.grads)):
        if r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p))
        if momentum:
            buf = r.state["momentum_buffer"][i]
            if r.first:  # torch: the buffer starts as the gradient, undamped
                buf.copy_(g)
            else:
                buf.mul_(col(c["mom"], p)).addcmul_(g, col(c["keep"], p))
            g = torch.addcmul(g, buf, col(c["mom"], p)) if nesterov else buf
        p.addcmul_(g, col(c["lr"], p))


def adagrad(r: Rows) -> None:
    """torch.optim.Adagrad: lr_decay, weight_decay, eps per member (initial_accumulator_value fills `sum`)."""
    clr = r.lr / (1 + (r.step - 1) * r.hypers["lr_decay"])
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], eps=r.hypers["eps"], clr=-clr)
    for p, g, total in zip(r.params, r.grads, r.state["sum"]):
        if r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p))
        total.addcmul_(g, g)
        std = total.sqrt().add_(col(c["eps"], p))
        p.addcdiv_(g * col(c["clr"], p), std)


def rmsprop(r: Rows) -> None:
    """torch.optim.RMSprop: alpha, eps, weight_decay, momentum per member; centered."""
    momentum, centered = r.switches
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], alpha=r.hypers["alpha"], rest=1 - r.hypers["alpha"],
              eps=r.hypers["eps"], mom=r.hypers["momentum"], lr=-r.lr)
    for i, (p, g) in enumerate(zip(r.params, r.grads)):
        if r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p))
        square_avg = r.state["square_avg"][i]
        square_avg.mul_(col(c["alpha"], p)).addcmul_(g, g * col(c["rest"], p))
        if centered:
            grad_avg = r.state["grad_avg"][i]
            grad_avg.lerp_(g, col(c["rest"], p))
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg.add_(col(c["eps"], p))
        if momentum:
            buf = r.state["momentum_buffer"][i]
            buf.mul_(col(c["mom"], p)).addcdiv_(g, avg)
            p.addcmul_(buf, col(c["lr"], p))
        else:
            p.addcdiv_(g * col(c["lr"], p), avg)


def adam(r: Rows, decoupled: bool = False) -> None:
    """torch.optim.Adam (L2 weight decay) or, `decoupled`, AdamW: betas, eps, weight_decay per member; amsgrad."""
    (amsgrad,) = r.switches
    beta1, beta2, lr = r.hypers["beta1"], r.hypers["beta2"], r.lr
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], shrink=1 - lr * r.hypers["weight_decay"],
              rest1=1 - beta1, beta2=beta2, rest2=1 - beta2, eps=r.hypers["eps"],
              bc2_sqrt=(1 - beta2**r.step) ** 0.5, step=-(lr / (1 - beta1**r.step)))
    for i, (p, g) in enumerate(zip(r.params, r.grads)):
        if r.decay and decoupled:
            p.mul_(col(c["shrink"], p))
        elif r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p))
        exp_avg, exp_avg_sq = r.state["exp_avg"][i], r.state["exp_avg_sq"][i]
        exp_avg.lerp_(g, col(c["rest1"], p))
        exp_avg_sq.mul_(col(c["beta2"], p)).addcmul_(g, g * col(c["rest2"], p))
        if amsgrad:
            torch.maximum(r.state["max_exp_avg_sq"][i], exp_avg_sq, out=r.state["max_exp_avg_sq"][i])
            exp_avg_sq = r.state["max_exp_avg_sq"][i]
        denom = (exp_avg_sq.sqrt() / col(c["bc2_sqrt"], p)).add_(col(c["eps"], p))
        p.addcdiv_(exp_avg * col(c["step"], p), denom)


def adamw(r: Rows) -> None:
    """torch.optim.AdamW: Adam with the weight decay applied to the parameter, not the gradient."""
    adam(r, decoupled=True)


RULES: dict[str, Callable[[Rows], None]] = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adam": adam,
                                            "adamw": adamw}
# Settings that are (m,) columns per kind, as the rules read them.
HYPERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "dampening", "weight_decay"),
    "adagrad": ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    "rmsprop": ("alpha", "eps", "weight_decay", "momentum"),
    "adam": ("beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("beta1", "beta2", "eps", "weight_decay"),
}


def state_names(name: str, switches: tuple[bool, ...]) -> tuple[str, ...]:
    """The per-parameter state a kind keeps, under torch's own names."""
    if name == "sgd":
        return ("momentum_buffer",) if switches[0] else ()
    if name == "adagrad":
        return ("sum",)
    if name == "rmsprop":
        return ("square_avg",) + (("momentum_buffer",) if switches[0] else ()) + (("grad_avg",) if switches[1] else ())
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if switches[0] else ())
