"""The optimizer registry: each built-in optimizer described once, and a user's own class read from its signature.

An entry gives the torch class (as a dotted path, imported only when a run builds it), every setting
that makes sense in gdtrain's loop under torch's own name with its type, range and default, a line
for `gdtrain list`, a colour family for the plots, the label forms of its settings and whether
gdtrain/stacked/rules.py has a vectorised rule for it. The config schema (config.py), `gdtrain list`,
the labels (names.py), the plots' colours (plotting.py), `gdtrain paths --optimizers` and the docs'
table are built from it; tests/test_optimizers.py checks each entry against torch's signature.
Settings torch offers that are not the maths (foreach, fused, capturable, differentiable) are
gdtrain's `implementation`; `maximize` is left out: the loss is minimised. Adding a built-in
optimizer is one entry here plus its row in tests/test_optimizers.py.

A config may instead name its own class, `name: "module:ClassName"` (module.py on the Python path,
in the current folder or beside the config file): user.py reads the class's signature into a
section checked like these. Torch-free: the schema and `gdtrain list` start at once.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from gdtrain.core.fields import Betas, Fraction, NonNegative, Positive, interval, items

Kernel = Literal["for_loop", "foreach", "fused"]


@dataclass(frozen=True)
class Setting:
    """One argument of the optimizer's constructor: its type (with range), torch's default and why."""

    type: Any
    default: Any
    comment: str = ""
    short: str | None = None  # how it reads in a label (`mom=0.9`); None: its own name
    allowed: str | None = None  # the docs' "allowed" cell, for a type ALLOWED does not know


@dataclass(frozen=True)
class Entry:
    """One built-in optimizer."""

    name: str  # the config's optimizer.name
    target: str  # the class, `package.module.Class`
    help: str  # one line for `gdtrain list` and the docs' table
    hue: str  # a matplotlib sequential colormap: the family's colour, shades for its settings
    settings: dict[str, Setting]
    kernels: tuple[Kernel, ...] = ("for_loop", "foreach")  # the implementations torch offers
    fused_on: tuple[str, ...] = ()  # device types with a fused kernel, the `auto` pick there
    stacked: bool = False  # a vectorised rule in gdtrain/stacked/rules.py (else the generic per-member path)
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra names for `paths --optimizers`
    check: Callable[[Any], str | None] | None = None  # a rule across settings: the error, or None
    rest: bool = False  # updates 2-D weights only; `rest:` names the optimizer for the other parameters


def _pair_check(text: str, ok: Any) -> AfterValidator:
    def check(v: tuple[float, float]) -> tuple[float, float]:
        if not ok(*v):
            raise ValueError(f"{text}, got {list(v)}")
        return v

    return AfterValidator(check)


Lr = Setting(Positive, 1e-3, "step size")
Eps = Setting(NonNegative, 1e-8, "added to the denominator")
Decay = Setting(NonNegative, 0.0, "L2 penalty added to the gradient", "wd")
Moments = Setting(Betas, (0.9, 0.999), "decay of the first and second moment averages")
Decoupled = Setting(bool, False, "decay the weights directly (AdamW's form) instead of the gradient", "decoupled")
AnyFloat = Annotated[float, interval(None, None)]

ENTRIES: tuple[Entry, ...] = (
    Entry(
        "sgd",
        "torch.optim.SGD",
        "gradient descent; momentum, dampening, nesterov, weight_decay",
        "Blues",
        {
            "lr": Lr,
            "momentum": Setting(Fraction, 0.0, "heavy ball: v = momentum·v + g", "mom"),
            "dampening": Setting(Fraction, 0.0, "v = momentum·v + (1 - dampening)·g", "damp"),
            "weight_decay": Decay,
            "nesterov": Setting(bool, False, "look ahead: needs momentum > 0 and dampening 0"),
        },
        kernels=("for_loop", "foreach", "fused"),
        fused_on=("cpu", "cuda"),
        stacked=True,
        check=lambda c: (
            f"nesterov: needs momentum > 0 and dampening = 0, got momentum {c.momentum:g} and dampening {c.dampening:g}"
            if c.nesterov and (c.momentum == 0 or c.dampening != 0)
            else None
        ),
        aliases={
            "momentum": {"momentum": 0.9},  # heavy ball, torch's form: v = 0.9·v + g
            "nesterov": {"momentum": 0.9, "nesterov": True},
        },
    ),
    Entry(
        "adagrad",
        "torch.optim.Adagrad",
        "per-parameter lr scaled by accumulated squared gradients",
        "Greens",
        {
            "lr": Setting(Positive, 1e-2, "step size"),
            "lr_decay": Setting(NonNegative, 0.0, "lr / (1 + (step - 1)·lr_decay)"),
            "weight_decay": Decay,
            "initial_accumulator_value": Setting(NonNegative, 0.0, "the sum of squares starts here", "acc0"),
            "eps": Setting(NonNegative, 1e-10, "added to the denominator"),
        },
        kernels=("for_loop", "foreach", "fused"),
        fused_on=("cpu",),
        stacked=True,
    ),
    Entry(
        "rmsprop",
        "torch.optim.RMSprop",
        "lr scaled by a moving average of squared gradients; alpha, momentum, centered",
        "Purples",
        {
            "lr": Setting(Positive, 1e-2, "step size"),
            "alpha": Setting(Fraction, 0.99, "smoothing of the squared-gradient average"),
            "eps": Eps,
            "weight_decay": Decay,
            "momentum": Setting(Fraction, 0.0, "momentum on the scaled step", "mom"),
            "centered": Setting(bool, False, "divide by the variance estimate, not the raw second moment"),
        },
        stacked=True,
    ),
    Entry(
        "adam",
        "torch.optim.Adam",
        "momentum + RMSprop scaling with bias correction; betas, eps, amsgrad",
        "Reds",
        {
            "lr": Lr,
            "betas": Moments,
            "eps": Eps,
            "weight_decay": Setting(NonNegative, 0.0, "L2 added to the gradient (see decoupled_weight_decay)", "wd"),
            "amsgrad": Setting(bool, False, "divide by the largest second moment seen"),
            "decoupled_weight_decay": Decoupled,
        },
        kernels=("for_loop", "foreach", "fused"),
        fused_on=("cpu", "cuda"),
        stacked=True,
    ),
    Entry(
        "adamw",
        "torch.optim.AdamW",
        "Adam with decoupled weight decay",
        "RdPu",
        {
            "lr": Lr,
            "betas": Moments,
            "eps": Eps,
            "weight_decay": Setting(NonNegative, 1e-2, "decoupled: p -= lr·weight_decay·p, torch's default", "wd"),
            "amsgrad": Setting(bool, False, "divide by the largest second moment seen"),
        },
        kernels=("for_loop", "foreach", "fused"),
        fused_on=("cpu", "cuda"),
        stacked=True,
    ),
    Entry(
        "nadam",
        "torch.optim.NAdam",
        "Adam with Nesterov momentum; momentum_decay",
        "Oranges",
        {
            "lr": Setting(Positive, 2e-3, "step size"),
            "betas": Moments,
            "eps": Eps,
            "weight_decay": Decay,
            "momentum_decay": Setting(NonNegative, 4e-3, "schedule of the momentum coefficient", "mdecay"),
            "decoupled_weight_decay": Decoupled,
        },
    ),
    Entry(
        "radam",
        "torch.optim.RAdam",
        "Adam with the variance of the adaptive lr rectified (no warm-up needed)",
        "YlOrBr",
        {
            "lr": Lr,
            "betas": Moments,
            "eps": Eps,
            "weight_decay": Decay,
            "decoupled_weight_decay": Decoupled,
        },
    ),
    Entry(
        "adamax",
        "torch.optim.Adamax",
        "Adam with the infinity norm in place of the second moment",
        "OrRd",
        {
            "lr": Setting(Positive, 2e-3, "step size"),
            "betas": Setting(Betas, (0.9, 0.999), "decay of the first moment and of the infinity norm"),
            "eps": Eps,
            "weight_decay": Decay,
        },
    ),
    Entry(
        "adadelta",
        "torch.optim.Adadelta",
        "steps scaled by the ratio of running update and gradient sizes; rho",
        "BuGn",
        {
            "lr": Setting(Positive, 1.0, "scales the delta (1: the paper's method)"),
            "rho": Setting(Annotated[float, interval(0, 1)], 0.9, "decay of the running averages", allowed="[0, 1]"),
            "eps": Setting(NonNegative, 1e-6, "added inside the square roots"),
            "weight_decay": Decay,
        },
    ),
    Entry(
        "rprop",
        "torch.optim.Rprop",
        "sign-based steps that grow or shrink with the gradient's sign (full batches)",
        "Greys",
        {
            "lr": Setting(Positive, 1e-2, "the first step size"),
            "etas": Setting(
                Annotated[
                    tuple[float, float],
                    items("etaminus", "etaplus"),
                    _pair_check("must be 0 < etaminus < 1 < etaplus", lambda a, b: 0 < a < 1 < b),
                ],
                (0.5, 1.2),
                "factors that shrink and grow a step",
                allowed="0 < etaminus < 1 < etaplus",
            ),
            "step_sizes": Setting(
                Annotated[
                    tuple[float, float],
                    items("min", "max"),
                    _pair_check("must be 0 <= min <= max", lambda a, b: 0 <= a <= b),
                ],
                (1e-6, 50.0),
                "the smallest and largest step",
                allowed="0 ≤ min ≤ max",
            ),
        },
    ),
    Entry(
        "asgd",
        "torch.optim.ASGD",
        "SGD that also keeps a running average of the iterates",
        "PuBu",
        {
            "lr": Setting(Positive, 1e-2, "step size"),
            "lambd": Setting(NonNegative, 1e-4, "decay term"),
            "alpha": Setting(NonNegative, 0.75, "power of the eta update"),
            "t0": Setting(NonNegative, 1e6, "the step at which averaging starts"),
            "weight_decay": Decay,
        },
    ),
    Entry(
        "adafactor",
        "torch.optim.Adafactor",
        "factored second moments (row and column averages): memory-light Adam",
        "YlGn",
        {
            "lr": Setting(Positive, 1e-2, "step size"),
            "beta2_decay": Setting(
                Annotated[float, interval(None, 0)], -0.8, "beta2 = 1 - step^beta2_decay", allowed="≤ 0"
            ),
            "eps": Setting(
                Annotated[tuple[NonNegative | None, NonNegative], items("eps1", "eps2")],
                (None, 1e-3),
                "eps1 (null: the dtype's eps) and eps2",
                allowed="[≥ 0 or null, ≥ 0]",
            ),
            "d": Setting(
                Annotated[float, interval(1, None)], 1.0, "clipping threshold of the update's RMS", allowed="≥ 1"
            ),
            "weight_decay": Decay,
        },
        kernels=("for_loop", "foreach"),
    ),
    Entry(
        "muon",
        "torch.optim.Muon",
        "momentum orthogonalised by Newton-Schulz, for 2-D weights; rest: the optimizer for the others",
        "PuRd",
        {
            "lr": Lr,
            "weight_decay": Setting(NonNegative, 0.1, "decoupled weight decay", "wd"),
            "momentum": Setting(Fraction, 0.95, "momentum of the update", "mom"),
            "nesterov": Setting(bool, True, "Nesterov momentum"),
            "ns_coefficients": Setting(
                Annotated[tuple[AnyFloat, AnyFloat, AnyFloat], items("a", "b", "c")],
                (3.4445, -4.775, 2.0315),
                "the Newton-Schulz polynomial",
                "ns",
                allowed="three finite numbers",
            ),
            "eps": Setting(NonNegative, 1e-7, "added to the norm before Newton-Schulz"),
            "ns_steps": Setting(
                Annotated[int, AfterValidator(lambda v: _positive_int(v))], 5, "Newton-Schulz steps", allowed="≥ 1"
            ),
            "adjust_lr_fn": Setting(
                Literal["original", "match_rms_adamw"] | None,
                None,
                "scale lr by the matrix's shape (null: torch's default, original)",
                "adjust",
            ),
        },
        kernels=("for_loop",),
        rest=True,
    ),
)


def _positive_int(v: int) -> int:
    if v < 1:
        raise ValueError(f"must be >= 1, got {v}")
    return v


OPTIMIZERS: dict[str, Entry] = {entry.name: entry for entry in ENTRIES}

# torch.optim classes that do not fit a loop of one gradient and one step each batch, and why.
REFUSED = {
    "lbfgs": "LBFGS re-evaluates the loss several times per step through a closure, which gdtrain's one-step loop "
    "does not give; use rprop for full batches or adam",
    "sparseadam": "SparseAdam needs sparse gradients (nn.Embedding(sparse=True)), and gdtrain's models give dense ones;"
    " use adam",
}
NOT_SETTINGS = ("params", "foreach", "fused", "capturable", "differentiable", "maximize")

# The words `gdtrain paths --optimizers` takes: every name, and sgd's `momentum` and `nesterov`.
ALIASES: dict[str, dict[str, Any]] = {
    word: {"name": e.name, **values}
    for e in ENTRIES
    if not e.rest  # muon: the path's x is a vector, and muon updates matrices
    for word, values in {e.name: {}, **e.aliases}.items()
}


def is_user(name: Any) -> bool:
    """A user's class (`module:ClassName`) rather than a registry name."""
    return isinstance(name, str) and ":" in name


def display_name(name: str) -> str:
    """How an optimizer name reads in labels and folder names: a user's `module:Class` as its class name."""
    return name.rpartition(":")[2].rpartition(".")[2] if is_user(name) else name


def hue(name: str) -> str | None:
    """The colour family of an optimizer name (None for a user's class: the plots pick a spare one)."""
    entry = OPTIMIZERS.get(name)
    return entry.hue if entry else None


def short_names() -> dict[str, str]:
    """`optimizer.<setting>` -> its label form, over every entry (one form per setting name)."""
    return {f"optimizer.{k}": s.short for e in ENTRIES for k, s in e.settings.items() if s.short}


# --- the docs' reference tables (docs/configs.md, between the markers; `make docs-optimizers`) ----

ALLOWED = {id(Positive): "> 0", id(NonNegative): "≥ 0", id(Fraction): "[0, 1)", id(Betas): "two numbers in [0, 1)"}


def _cell(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join("null" if v is None else format(v, "g") for v in value) + "]`"
    return f"`{format(value, 'g') if isinstance(value, float) else value}`"


def _allowed(setting: Setting) -> str:
    if setting.allowed:
        return setting.allowed
    if setting.type is bool:
        return "`true`, `false`"
    args = typing.get_args(setting.type)
    literal = [a for a in args if typing.get_origin(a) is Literal] if args else []
    if typing.get_origin(setting.type) is Literal or literal:
        values = [v for a in (literal or [setting.type]) for v in typing.get_args(a)]
        return ", ".join(f"`{v}`" for v in values) + (", `null`" if type(None) in args else "")
    return ALLOWED[id(setting.type)]


BEGIN, END = "<!-- optimizers: from gdtrain/core/optimizers.py -->", "<!-- end of optimizers -->"


def write_reference(page: Path) -> None:
    """Put reference() between the markers of `page` (docs/configs.md)."""
    text = page.read_text(encoding="utf-8")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    page.write_text(f"{head}{BEGIN}\n\n{reference()}\n{END}{tail}", encoding="utf-8")


def reference() -> str:
    """The Markdown tables of every built-in optimizer's settings, as docs/configs.md shows them."""
    out = []
    for e in ENTRIES:
        out += [f"### optimizer: `{e.name}`", "", f"`{e.target}`: {e.help}"]
        out[-1] += " (stacked groups: " + ("a vectorised rule)" if e.stacked else "one optimizer per member)")
        out += ["", "| key | default | allowed | what |", "|---|---|---|---|"]
        for key, setting in e.settings.items():
            out.append(f"| `{key}` | {_cell(setting.default)} | {_allowed(setting)} | {setting.comment} |")
        if len(e.kernels) > 1:
            kernels = ", ".join(f"`{k}`" for k in ("auto", *e.kernels))
            out.append(f"| `implementation` | `auto` | {kernels} | torch's kernel; `auto`: the fastest torch offers |")
        if e.rest:
            out.append(
                "| `rest` | (required) | an optimizer section | the optimizer of the parameters that are not 2-D |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # python -m gdtrain.core.optimizers docs/configs.md
    write_reference(Path(sys.argv[1]))
