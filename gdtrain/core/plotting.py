"""What every picture gdtrain draws shares: the optional matplotlib, a figure, its file, a seed band.

matplotlib is the optional `plot` extra (`pip install 'gdtrain[plot]'`). The commands call
`require_matplotlib` before they start, so a missing extra is one `error:` line and no run. Figures
are matplotlib's object API (`Figure`, drawn by the Agg canvas): no pyplot, no global state, no
display needed. report/curveplot.py (compare --plot), training/pathplot.py (optimizer paths) and
study/plot.py (a study's figures) draw with these.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from gdtrain.core import optimizers as registry
from gdtrain.core.errors import UserError

Curve = list[tuple[float, float]]  # (x, value) points of one run


def require_matplotlib(what: str) -> None:
    """A UserError naming the extra to install when matplotlib is missing; `what` needs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            f"{what} needs matplotlib, which is not installed; pip install 'gdtrain[plot]' (or matplotlib)"
        ) from None


def figure(width: float, height: float) -> Any:
    """A new matplotlib Figure of width × height inches, laid out so labels and legends fit."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


SPARE_HUES = ("GnBu", "BuPu", "YlGnBu", "PuBuGn")  # for a user's classes: none is, or looks like, a registry hue


def hue(family: str) -> str:
    """A family's colormap: the registry's for a built-in optimizer, else a spare one picked by the
    name (so one class has one colour in every picture)."""
    return registry.hue(family) or SPARE_HUES[zlib.crc32(family.encode()) % len(SPARE_HUES)]


def shades(families: list[str], order: list[Any]) -> list[Any]:
    """One colour per row: a matplotlib colormap per family (the optimizer's name: sgd is always
    blue, adam red), and within a family a shade per row, lighter to darker by `order` (e.g. lr)."""
    from matplotlib import colormaps

    hues = {family: hue(family) for family in dict.fromkeys(families)}
    colours: list[Any] = [None] * len(families)
    for family, name in hues.items():
        rows = sorted((i for i, f in enumerate(families) if f == family), key=lambda i: order[i])
        for k, i in enumerate(rows):  # 0.45-0.95 of the map: its lightest shades barely show on white
            colours[i] = colormaps[name](0.7 if len(rows) == 1 else 0.45 + 0.5 * k / (len(rows) - 1))
    return colours


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def label_styles(families: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per label (a study's optimizer, a path's) its colour, marker and line style. The colour is its
    optimizer's hue (one per optimizer name in every picture: rmsprop is purple wherever it is drawn),
    a shade per label within it, by the label's name, not its place in a list; markers and line
    styles differ between the labels of one picture, so a line drawn over another stays visible."""
    labels = sorted(families)
    colours = shades([families[label] for label in labels], labels)
    return {
        label: {"color": colour, "marker": MARKERS[k % len(MARKERS)], "ls": LINESTYLES[k % len(LINESTYLES)]}
        for k, (label, colour) in enumerate(zip(labels, colours))
    }


def save(fig: Any, path: Path, fix: str | None) -> None:
    """Write the figure as a PNG, whole or not at all (drawn in memory, then written beside and
    renamed); a folder that cannot take it is a UserError ending with `fix` (None: the OSError)."""
    import io

    from gdtrain.core.runs import write_atomic

    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    try:
        write_atomic(path, png.getbuffer())
    except OSError as err:
        if fix is None:
            raise
        raise UserError(f"{path}: cannot write the picture ({err.strerror or err}); {fix}") from None


def band(curves: list[Curve]) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, mean, min and max over the curves, at the x values every curve has."""
    shared = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    at = [dict(c) for c in curves]
    values = [[a[x] for a in at] for x in shared]
    return shared, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def draw_band(
    ax: Any, curves: list[Curve], color: Any, label: str, marker: str | None = None, band_too: bool = True
) -> None:
    """One line for one run; for seeds, their mean with a band from the lowest to the highest (unless
    not `band_too`). A curve of three points or fewer gets markers: a single point is no line."""
    curves = [c for c in curves if c]
    if not curves:
        return
    x, mean, low, high = band(curves)
    marker = marker or ("o" if len(x) <= 3 else None)
    ax.plot(x, mean, color=color, lw=1.6, marker=marker, markersize=3 if len(x) > 3 else 5, label=label or None)
    if band_too and len(curves) > 1 and len(x) > 1:
        ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
    elif band_too and len(curves) > 1:  # one point: its band is a bar from the lowest to the highest
        ax.errorbar(x, mean, yerr=[[mean[0] - low[0]], [high[0] - mean[0]]], color=color, capsize=4, lw=1.2)


def render(fig: Any) -> Any:
    """The figure's pixels, an (H, W, 3) uint8 array, drawn once for both a PNG and TensorBoard."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_pixels(image: Any, path: Path) -> None:
    """Write (H, W, 3) uint8 pixels as a PNG."""
    from matplotlib.image import imsave

    imsave(path, image)
