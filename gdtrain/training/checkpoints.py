"""Checkpoints: everything a run needs to continue bit for bit, written so a kill never breaks one.

A checkpoint is `checkpoints/step-<step>.pt` in the run folder: model, optimizer, schedules,
the loop's progress and every RNG (data order, torch, CUDA, numpy, Python). It is written to a
temporary file and renamed, so a kill at any moment leaves the previous one whole; `keep_last`
bounds how many stay. `best.pt` holds the model of the lowest validation loss. Files are read
with `torch.load(weights_only=True)`: tensors and plain containers only, never pickled code.
No fsync: the promise is surviving a killed process, not a power cut.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdtrain.core.errors import UserError
from gdtrain.core.runs import write_atomic

STEP_FILE = re.compile(r"step-(\d+)\.pt")


def step_of(path: Path) -> int:
    """The optimizer step of a step checkpoint file, from its name."""
    return int(STEP_FILE.fullmatch(path.name).group(1))


def rng_states(order: torch.Generator) -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "order": order.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": _python_state(),
    }


def _python_state() -> list[Any]:
    """random.getstate() with its 625 ints as one tensor: ~40x faster to save than a tuple."""
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def restore_rng(states: dict[str, Any], order: torch.Generator) -> None:
    """Put every RNG back where `rng_states` found it."""
    order.set_state(states["order"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save `obj` as `path` through a temporary file and a rename (runs.write_atomic)."""
    # Serialised in memory first: torch.save into a file reports a full disk as a RuntimeError with
    # no errno, where a plain write raises OSError(ENOSPC), which a run handles as a disk error.
    # The cost is one more copy of the state in memory, for a moment.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer())


class Checkpoints:
    """The checkpoints of one run folder: save the newest, keep the last few, track the best."""

    def __init__(self, run_dir: Path, keep_last: int, resolved: dict[str, Any]) -> None:
        self.folder = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.resolved = json.dumps(resolved)  # the run's config, saved in each file and checked on load

    def save(self, state: dict[str, Any], step: int, prune: bool = True) -> Path:
        """Write `state` as step-<step>.pt, then (`prune`) drop all but the newest `keep_last`."""
        self.folder.mkdir(exist_ok=True)
        path = self.path(step)
        save_atomic(state | {"config": self.resolved}, path)
        if prune:
            self.prune()
        return path

    def prune(self) -> None:
        """Drop all step checkpoints but the newest `keep_last`."""
        for old in self.all()[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def path(self, step: int) -> Path:
        """The file of the checkpoint at optimizer step `step`."""
        return self.folder / f"step-{step:09d}.pt"

    def steps(self) -> list[int]:
        """The steps of the step checkpoints there are, oldest first."""
        return [step_of(p) for p in self.all()]

    def continue_from(self, step: int | None = None) -> Path | None:
        """The checkpoint to continue from: the one at `step` when there is one, the newer ones
        removed (the run writes them again, the same, and must not take a stale one for its newest;
        groups.align picks such a step); else the newest, or None."""
        if step is None or step not in self.steps():
            return self.latest()
        for newer in self.all():
            if step_of(newer) > step:
                newer.unlink(missing_ok=True)
        return self.path(step)

    def save_best(self, state: dict[str, Any]) -> None:
        """best.pt: the model at the lowest validation loss so far."""
        self.folder.mkdir(exist_ok=True)
        save_atomic(state | {"config": self.resolved}, self.folder / "best.pt")

    def all(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if STEP_FILE.fullmatch(p.name))

    def latest(self) -> Path | None:
        """The newest step checkpoint, or None."""
        found = self.all()
        return found[-1] if found else None


def load(path: Path, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint safely; a corrupt file, or one written by another config, is a UserError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except Exception as err:  # on corrupt bytes the weights-only unpickler raises IndexError, KeyError, struct.error...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{path}: not a readable gdtrain checkpoint ({first[:160]}); delete it to fall back on "
            "an older one, or start the run again"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), str):
        raise UserError(f"{path}: not a gdtrain checkpoint (no config in it)")
    saved = json.loads(state["config"])
    if resolved is not None and saved != json.loads(json.dumps(resolved)):
        diff = _first_difference(saved, json.loads(json.dumps(resolved)))
        raise UserError(
            f"{path}: written by a different config ({diff}); resume it with the config.yaml it was saved with"
        )
    return state


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict file such as model.pt, read safely."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # as in load: whatever corrupt bytes make the unpickler raise
        raise UserError(
            f"{path}: not a readable weights file ({type(err).__name__}); the run's checkpoints may still be"
        ) from None
    return state_dict_in(weights, path)


def state_dict_in(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """`obj` when it is a state_dict (parameter names to tensors); else a UserError naming `path`."""
    if isinstance(obj, dict):
        odd = next(((k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
        if odd is None:
            return obj
        found = f"a dict whose entry {str(odd[0])[:40]!r} is a {type(odd[1]).__name__}, not a tensor"
    else:
        found = "None" if obj is None else f"a {type(obj).__name__}"
    raise UserError(f"{path}: not a state_dict of weights (found {found}); the run's checkpoints may still be")


def _first_difference(saved: Any, current: Any, path: str = "") -> str:
    """`optimizer.lr: 0.1 in the checkpoint, 0.01 now`."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            if saved.get(key) != current.get(key):
                return _first_difference(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
    return f"{path}: {saved!r} in the checkpoint, {current!r} now"
