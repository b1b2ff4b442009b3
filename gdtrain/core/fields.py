"""The value types of config settings: numbers in a range, pairs, batch sizes; each error states the range.

Shared by the config schema (config.py) and the optimizer registry (optimizers.py). Torch-free.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field


def interval(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False):
    """A float check whose error states the whole allowed range, e.g. `must be in [0, 1)`."""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
    if lo is None and hi is None:
        text = "must be a finite number"
    elif hi is None:
        text = f"must be {'>' if lo_open else '>='} {lo:g}"
    elif lo is None:
        text = f"must be {'<' if hi_open else '<='} {hi:g}"
    else:
        text = f"must be in {left}{lo:g}, {hi:g}{right}"

    def check(v: float) -> float:
        ok = math.isfinite(v)
        ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise ValueError(f"{text}, got {v!r}")
        return v

    return AfterValidator(check)


Positive = Annotated[float, interval(0, None, lo_open=True)]
NonNegative = Annotated[float, interval(0, None)]
Fraction = Annotated[float, interval(0, 1, hi_open=True)]  # [0, 1)
OpenFraction = Annotated[float, interval(0, 1, lo_open=True, hi_open=True)]  # (0, 1)
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


def _batch_size(v: Any) -> Any:
    if v == "full" or (type(v) is int and v > 0):
        return v
    raise ValueError(f"must be 'full' or a whole number >= 1, got {v!r}")


BatchSize = Annotated[Literal["full"] | int, BeforeValidator(_batch_size)]


def items(*words: str) -> BeforeValidator:
    """A list of len(words) values as a tuple; the error names them, e.g. `must be two numbers [beta1, beta2]`."""
    count = {2: "two", 3: "three"}.get(len(words), str(len(words)))

    def check(v: Any) -> Any:
        if isinstance(v, (list, tuple)) and len(v) == len(words):
            return tuple(v)
        raise ValueError(f"must be {count} numbers [{', '.join(words)}], got {v!r}")

    return BeforeValidator(check)


Betas = Annotated[tuple[Fraction, Fraction], items("beta1", "beta2")]  # torch: 0 <= beta < 1, beta1 = 0 allowed
