"""torch.optim's update rules on rows of stacked members, each setting an (m,) column per member.

The single-tensor rules are torch/optim/<name>.py's `_single_tensor_<name>` (the `foreach=False`
kernel) op for op, with the floats that torch takes per param group (lr, momentum, betas, eps, ...)
as (m,) columns broadcast over a parameter's dims. torch computes its per-step scalars (lr / bias
correction, 1 - beta, Adagrad's decayed lr) in Python floats and the kernel rounds them to the
parameter's dtype; here they are computed in float64 and cast once, which rounds the same way.
Which branch a rule takes (momentum on, nesterov, centered, amsgrad) is one per call: members
differing in those are different kinds (optimizer.switches). The fused rules below call torch's own
fused kernels. tests/test_stackopt.py proves every rule against torch.optim.
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
    work: list[tuple[Tensor, Tensor]]  # two (m, *shape) scratch tensors per parameter: no allocation per step
    hypers: dict[str, Tensor]  # (m,) float64: the config's settings, betas as beta1 and beta2
    lr: Tensor  # (m,) float64: this step's lr
    step: Tensor  # (m,) float64: steps taken, this one included
    switches: tuple[bool, ...]  # the formula's branches, optimizer.switches
    decay: bool  # some member has weight_decay != 0 (torch skips the op at 0; adding 0·p is the same)
    first: bool  # the kind's first step (SGD's momentum buffer starts as the gradient)


def _cast(like: Tensor, **values: Tensor) -> dict[str, Tensor]:
    """(m,) float64 values in the parameters' dtype and device, cast once per step."""
    return {k: v.to(like.device, like.dtype) for k, v in values.items()}


def col(x: Tensor, like: Tensor) -> Tensor:
    """An (m,) vector as an (m, 1, ..., 1) column that broadcasts over `like`'s dims."""
    return x.view(-1, *[1] * (like.dim() - 1))


# The temporaries torch allocates (grad + wd·p, sqrt(v), ...) go to the scratch tensors w0 and w1:
# allocating them costs more than the arithmetic at these sizes (page faults on fresh memory).


def sgd(r: Rows) -> None:
    """torch.optim.SGD: momentum, dampening, nesterov, weight_decay per member."""
    momentum, nesterov = r.switches
    c = _cast(
        r.params[0], wd=r.hypers["weight_decay"], mom=r.hypers["momentum"], keep=1 - r.hypers["dampening"], lr=-r.lr
    )
    for i, (p, g, (w0, w1)) in enumerate(zip(r.params, r.grads, r.work)):
        if r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p), out=w0)
        if momentum:
            buf = r.state["momentum_buffer"][i]
            if r.first:  # torch: the buffer starts as the gradient, undamped
                buf.copy_(g)
            else:
                buf.mul_(col(c["mom"], p)).addcmul_(g, col(c["keep"], p))
            g = torch.addcmul(g, buf, col(c["mom"], p), out=w1) if nesterov else buf
        p.addcmul_(g, col(c["lr"], p))


def adagrad(r: Rows) -> None:
    """torch.optim.Adagrad: lr_decay, weight_decay, eps per member (initial_accumulator_value fills `sum`)."""
    clr = r.lr / (1 + (r.step - 1) * r.hypers["lr_decay"])
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], eps=r.hypers["eps"], clr=-clr)
    for p, g, total, (w0, w1) in zip(r.params, r.grads, r.state["sum"], r.work):
        if r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p), out=w0)
        total.addcmul_(g, g)
        std = torch.sqrt(total, out=w1).add_(col(c["eps"], p))
        p.addcdiv_(torch.mul(g, col(c["clr"], p), out=w0), std)


def rmsprop(r: Rows) -> None:
    """torch.optim.RMSprop: alpha, eps, weight_decay, momentum per member; centered."""
    momentum, centered = r.switches
    c = _cast(
        r.params[0],
        wd=r.hypers["weight_decay"],
        alpha=r.hypers["alpha"],
        rest=1 - r.hypers["alpha"],
        eps=r.hypers["eps"],
        mom=r.hypers["momentum"],
        lr=-r.lr,
    )
    for i, (p, g, (w0, w1)) in enumerate(zip(r.params, r.grads, r.work)):
        if r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p), out=w0)
        square_avg = r.state["square_avg"][i]
        square_avg.mul_(col(c["alpha"], p)).addcmul_(g, torch.mul(g, col(c["rest"], p), out=w1))
        if centered:
            grad_avg = r.state["grad_avg"][i]
            grad_avg.lerp_(g, col(c["rest"], p))
            avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=w1).sqrt_()
        else:
            avg = torch.sqrt(square_avg, out=w1)
        avg.add_(col(c["eps"], p))
        if momentum:
            buf = r.state["momentum_buffer"][i]
            buf.mul_(col(c["mom"], p)).addcdiv_(g, avg)
            p.addcmul_(buf, col(c["lr"], p))
        else:
            p.addcdiv_(torch.mul(g, col(c["lr"], p), out=w0), avg)


def adam(r: Rows, decoupled: bool = False) -> None:
    """torch.optim.Adam (L2 weight decay) or, `decoupled` (AdamW, or Adam's decoupled_weight_decay), AdamW's
    form: betas, eps, weight_decay per member; amsgrad."""
    amsgrad, decoupled = r.switches[0], decoupled or r.switches[1:] == (True,)
    beta1, beta2, lr = r.hypers["beta1"], r.hypers["beta2"], r.lr
    c = _cast(
        r.params[0],
        wd=r.hypers["weight_decay"],
        shrink=1 - lr * r.hypers["weight_decay"],
        rest1=1 - beta1,
        beta2=beta2,
        rest2=1 - beta2,
        eps=r.hypers["eps"],
        bc2_sqrt=(1 - beta2**r.step) ** 0.5,
        step=-(lr / (1 - beta1**r.step)),
    )
    for i, (p, g, (w0, w1)) in enumerate(zip(r.params, r.grads, r.work)):
        if r.decay and decoupled:
            p.mul_(col(c["shrink"], p))
        elif r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p), out=w0)
        exp_avg, exp_avg_sq = r.state["exp_avg"][i], r.state["exp_avg_sq"][i]
        exp_avg.lerp_(g, col(c["rest1"], p))
        exp_avg_sq.mul_(col(c["beta2"], p)).addcmul_(g, torch.mul(g, col(c["rest2"], p), out=w1))
        if amsgrad:
            torch.maximum(r.state["max_exp_avg_sq"][i], exp_avg_sq, out=r.state["max_exp_avg_sq"][i])
            exp_avg_sq = r.state["max_exp_avg_sq"][i]
        denom = torch.sqrt(exp_avg_sq, out=w1).div_(col(c["bc2_sqrt"], p)).add_(col(c["eps"], p))
        p.addcdiv_(torch.mul(exp_avg, col(c["step"], p), out=w0), denom)


def adamw(r: Rows) -> None:
    """torch.optim.AdamW: Adam with the weight decay applied to the parameter, not the gradient."""
    adam(r, decoupled=True)


RULES: dict[str, Callable[[Rows], None]] = {
    "sgd": sgd,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
}
# Settings that are (m,) columns per kind, as the rules read them.
HYPERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "dampening", "weight_decay"),
    "adagrad": ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    "rmsprop": ("alpha", "eps", "weight_decay", "momentum"),
    "adam": ("beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("beta1", "beta2", "eps", "weight_decay"),
}


def state_names(name: str, switches: tuple[bool, ...]) -> tuple[str, ...]:  # adam's switches: amsgrad, decoupled
    """The per-parameter state a kind keeps, under torch's own names."""
    if name == "sgd":
        return ("momentum_buffer",) if switches[0] else ()
    if name == "adagrad":
        return ("sum",)
    if name == "rmsprop":
        return ("square_avg",) + (("momentum_buffer",) if switches[0] else ()) + (("grad_avg",) if switches[1] else ())
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if switches[0] else ())


# --- torch's fused kernels (gdtrain's pick on the CPU for Adam, AdamW, Adagrad) ---------------------
# Not for SGD, though gdtrain picks fused SGD for a solo run too: torch's fused SGD kernel gives a row
# of a stacked tensor other last bits than the same numbers in a tensor of their own (where the
# vector loop's tail falls), so it would match neither for_loop nor the solo fused run; its
# single-tensor rule (two or three passes) matches for_loop bit for bit. RMSprop has no fused kernel.
# A fused kernel takes every setting as one float, so these rules serve members with equal betas and
# eps (stacked/optimizer.py keys such kinds by those values). When the rows share lr and weight decay too (a
# group of seeds), the kernel updates them as it updates a solo run, bit for bit. Otherwise it writes
# the update with lr = 1 into a zeroed scratch z and p += lr·z applies each member's lr: one pass
# more; weight decay per member goes into the gradient first (L2) or shrinks p first (AdamW), as torch does.


def _shared(r: Rows, *names: str) -> dict[str, float] | None:
    """lr and the named settings as floats when every row has the same, else None."""
    values = {"lr": r.lr, **{name: r.hypers[name] for name in names}}
    if all(bool((v == v[0]).all()) for v in values.values()):
        return {name: v[0].item() for name, v in values.items()}
    return None


def _steps(r: Rows) -> list[Tensor]:
    """The fused kernels' state_steps: float32 on the parameters' device, as torch keeps them for fused."""
    return [torch.tensor(r.step[0].item(), dtype=torch.float32, device=r.params[0].device)] * len(r.params)


def adam_fused(r: Rows, decoupled: bool = False) -> None:
    """torch._fused_adam_ / _fused_adamw_ over the rows, lr and weight_decay per member."""
    amsgrad, decoupled = r.switches[0], decoupled or r.switches[1:] == (True,)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    steps = _steps(r)
    betas = {name: r.hypers[name][0].item() for name in ("beta1", "beta2", "eps")}  # one per fused kind
    state = (r.state["exp_avg"], r.state["exp_avg_sq"], r.state.get("max_exp_avg_sq", []), steps)
    shared = _shared(r, "weight_decay")
    if shared is not None:
        kernel(r.params, r.grads, *state, **shared, **betas, amsgrad=amsgrad, maximize=False)
        return
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], shrink=1 - r.lr * r.hypers["weight_decay"], lr=r.lr)
    grads, zs = [], []
    for p, g, (w0, w1) in zip(r.params, r.grads, r.work):
        if r.decay and decoupled:
            p.mul_(col(c["shrink"], p))
        elif r.decay:
            g = torch.addcmul(g, p, col(c["wd"], p), out=w0)
        grads.append(g)
        zs.append(w1.zero_())
    torch._fused_adam_(zs, grads, *state, lr=1.0, weight_decay=0.0, **betas, amsgrad=amsgrad, maximize=False)
    for p, z in zip(r.params, zs):
        p.addcmul_(z, col(c["lr"], p))


def adamw_fused(r: Rows) -> None:
    """torch._fused_adamw_'s update: Adam's with AdamW's decoupled decay applied before it."""
    adam_fused(r, decoupled=True)


def adagrad_fused(r: Rows) -> None:
    """torch._fused_adagrad_ over the rows, lr, lr_decay and weight_decay per member."""
    steps = _steps(r)
    eps = r.hypers["eps"][0].item()
    shared = _shared(r, "lr_decay", "weight_decay")
    if shared is not None:
        torch._fused_adagrad_(r.params, r.grads, r.state["sum"], steps, **shared, eps=eps, maximize=False)
        return
    c = _cast(r.params[0], wd=r.hypers["weight_decay"], clr=r.lr / (1 + (r.step - 1) * r.hypers["lr_decay"]))
    grads, zs = [], []
    for p, g, (w0, w1) in zip(r.params, r.grads, r.work):
        grads.append(torch.addcmul(g, p, col(c["wd"], p), out=w0) if r.decay else g)
        zs.append(w1.zero_())
    torch._fused_adagrad_(
        zs, grads, r.state["sum"], steps, lr=1.0, lr_decay=0.0, weight_decay=0.0, eps=eps, maximize=False
    )
    for p, z in zip(r.params, zs):
        p.addcmul_(z, col(c["clr"], p))


FUSED_RULES: dict[str, Callable[[Rows], None]] = {"adam": adam_fused, "adamw": adamw_fused, "adagrad": adagrad_fused}
# The settings a fused kernel takes as one float: members of a fused kind share them.
FUSED_SHARED: dict[str, tuple[str, ...]] = {
    "adam": ("beta1", "beta2", "eps"),
    "adamw": ("beta1", "beta2", "eps"),
    "adagrad": ("eps",),
}
