"""What TensorBoard shows of an experiment folder: `tensorboard --logdir runs/<experiment>`.

- HParams: the folder's own event file (TensorBoard's run ".") holds the one experiment
  definition: every hyper-parameter any of its runs has, typed, with its domain; optimizer.name,
  optimizer.lr and the keys that tell configurations apart marked as varying (TensorBoard lists
  those first and ticks its first five columns); then the metrics the runs log. Each run folder
  holds its own session (start with its values, end with its status: session_start, session_end)
  and never a definition: TensorBoard takes one per logdir, an arbitrary one when runs carry
  several. define() rewrites it whenever a run is added.
- Custom Scalars: per configuration (runs that differ only in experiment.seed / run_name, as in
  compare), an aggregate run `_groups/<label>/` with `seeds/<tag>/mean`, `/min` and `/max`: the
  mean and the range over its seeds at the steps (epochs) all of them logged, and in `_groups/` a
  layout of margin charts that opens on loss/train, loss/val, accuracy/val and lr. write_groups()
  writes them when a sweep or study ends. `_groups` has no config.yaml and no run-folder name, so
  compare, study and sweep --resume never take it for a run.
  The series are not named `<tag>`, `<tag>/min`, `<tag>/max`: every run that has `<tag>` alone
  would be listed under each chart as "Missing Tags", and each group of the Scalars dashboard
  would get three cards more per tag. Under `seeds/` they are one group of their own there.

Several processes (a sweep's workers) add runs at once: every write holds an flock on the
experiment folder itself and replaces its event file whole (a temporary file renamed into place).
Torch-free: tensorboard's own protos and record writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.summary.writer.record_writer import RecordWriter

from gdtrain.core import folders, names, runs
from gdtrain.core.config import FunctionData, ImageData, to_dict
from gdtrain.core.errors import UserError
from gdtrain.core.plotting import band

GROUPS = "_groups"  # the aggregate runs' folder in the experiment folder
FIRST = ("optimizer.name", "optimizer.lr")  # always marked varying: what a comparison of optimizers reads first
TICKED = 5  # how many of the first hyper-parameters TensorBoard's HParams table shows at first
SEEDS = "seeds/"  # the aggregates' tag prefix: seeds/loss/train/mean, .../min, .../max
METRICS = ("loss/train", "loss/val", "accuracy/val", "loss/test", "accuracy/test")  # HParams columns, in order
OPENING = ("loss/train", "loss/val", "accuracy/val", "lr")  # the Custom Scalars charts a user sees first


def hparam_values(flat: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """A flattened config as HParams values: numbers and booleans as they are, lists as text
    ("[0.9, 0.999]"), None (a setting that is off or unset, e.g. experiment.run_name) left out."""
    values: dict[str, bool | int | float | str] = {}
    for key, value in flat.items():
        if value is None:
            continue
        values[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return values


def session_start(flat: dict[str, Any], trial_id: str) -> summary_pb2.Summary:
    """A run's HParams session: its values, named `trial_id` (the run folder's name) in the table."""
    return summary_v2.hparams_pb(hparam_values(flat), trial_id=trial_id)


def session_end(status: str) -> summary_pb2.Summary | None:
    """A run's session end: finished is a success, diverged a failure; an interrupted run has none."""
    if status not in runs.RESULTS:
        return None
    code = api_pb2.STATUS_SUCCESS if status == "finished" else api_pb2.STATUS_FAILURE
    # summary.session_end_pb builds the same, but needs TensorFlow
    end = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
    return plugin_summary(
        hparams_metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)
    )


def define(folder: Path) -> None:
    """(Re)write `folder`'s HParams experiment from its run folders; a warning when it cannot."""
    try:
        with _locked(folder):
            _define(folder)
    except OSError as err:  # TensorBoard's view is not worth a run: it trains on
        sys.stderr.write(f"warning: {folder}: cannot write TensorBoard's HParams definition ({err.strerror or err})\n")


def write_groups(folder: Path) -> None:
    """The HParams experiment, and per configuration of `folder`'s finished runs an aggregate run
    in `_groups/` with the Custom Scalars layout; a warning when they cannot be written."""
    try:
        with _locked(folder):
            _define(folder)
            _write_groups(folder)
    except OSError as err:
        sys.stderr.write(f"warning: {folder}: cannot write TensorBoard's groups ({err.strerror or err})\n")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on the experiment folder itself (no lock file) while writing in it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: written unguarded, each file still whole
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _define(folder: Path) -> None:
    sessions = [session for path in runs.run_folders(folder) if (session := _session(path)) is not None]
    if sessions:
        replace_events(folder, [_experiment(sessions)])


def _session(path: Path) -> tuple[folders.Run, list[str]] | None:
    """A run folder as a session: (its flat config, the metrics it logs); None for a picture-only
    folder (`gdtrain paths`) or a config.yaml that does not read."""
    if _picture_only(path):
        return None
    config = path / "config.yaml"
    try:
        stat = config.stat()
        flat, metrics = _read_config(config, stat.st_mtime_ns, stat.st_size)
    except (OSError, UserError):
        return None
    return folders.Run(path, "unknown", dict(flat)), metrics


def _picture_only(path: Path) -> bool:
    """`gdtrain paths`'s folder: a picture of other runs' paths, no curves of its own."""
    summary = runs.read_summary(path) or {}
    return "picture" in summary or (path / "paths.png").exists()


@functools.lru_cache(maxsize=4096)
def _read_config(path: Path, mtime_ns: int, size: int) -> tuple[dict[str, Any], list[str]]:
    """(flat config, metric tags) of a config.yaml; cached, since a sweep rereads every run's at each new run."""
    config = runs.load_run_config(path.parent)  # a user's optimizer class is found where the run found it
    if isinstance(config.data, FunctionData):
        metrics = ["loss/train"]
    else:
        splits = ("val", "test") if isinstance(config.data, ImageData) else ("val",)
        kinds = ("loss",) if config.train.loss == "mse" else ("loss", "accuracy")
        metrics = ["loss/train"] + [f"{kind}/{split}" for split in splits for kind in kinds]
    return runs.flatten(to_dict(config)), metrics


def _experiment(sessions: list[tuple[folders.Run, list[str]]]) -> summary_pb2.Summary:
    """The HParams experiment: the union of the runs' hyper-parameters, varying ones first, and their metrics."""
    found = [run for run, _ in sessions]
    values = [hparam_values(run.config) for run in found]
    configs = [run.config for run in found]
    varying = set(FIRST) | {key for config in configs for key in names.label_keys(configs, config)}
    seeds = {run.config.get("experiment.seed") for run in found}
    if len(seeds) > 1 and len(varying) < TICKED:  # a column to spare: each row is a run, the seed tells them apart
        varying.add("experiment.seed")
    keys = sorted(
        {key for value in values for key in value},
        key=lambda k: (k not in varying, FIRST.index(k) if k in FIRST else len(FIRST), k),
    )
    infos = []
    for key in keys:
        info = api_pb2.HParamInfo(name=key, differs=key in varying)
        domain = _domain([value[key] for value in values if key in value])
        if domain is not None:
            domain.update_hparam_info(info)
        infos.append(info)
    logged = {tag for _, metrics in sessions for tag in metrics}
    metrics = [summary_v2.Metric(tag).as_proto() for tag in METRICS if tag in logged]
    # summary_v2.hparams_config_pb would build this, but has no `differs`, which TensorBoard sorts on
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    return plugin_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def _domain(seen: list[bool | int | float | str]) -> summary_v2.Domain | None:
    """Discrete for booleans, strings and a few numbers; an interval for many numbers; None for mixed types."""
    kinds = {bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else str for v in seen}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    distinct = sorted({float(v) if kind is float else v for v in seen})
    if kind is float and len(distinct) > 10:  # a study's sampled lrs: a range to filter, not 50 boxes
        return summary_v2.RealInterval(distinct[0], distinct[-1])
    return summary_v2.Discrete(distinct, dtype=kind)


def plugin_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    """An HParams summary as summary_v2 writes one: the plugin data in the metadata, a null tensor."""
    value = summary_pb2.Summary.Value(
        tag=tag, metadata=hparams_metadata.create_summary_metadata(data), tensor=hparams_metadata.NULL_TENSOR
    )
    return summary_pb2.Summary(value=[value])


def _write_groups(folder: Path) -> None:
    """_groups/<label>/ per configuration with finished runs, the layout in _groups/; stale groups removed."""
    found = [folders.read_run(path) for path in runs.run_folders(folder) if not _picture_only(path)]
    _, found, _ = folders.members(folder, found)  # a sweep's or study's own runs, when it has a manifest
    configurations: dict[str, list[folders.Run]] = {}
    for run in found:
        key = json.dumps({k: v for k, v in run.config.items() if k not in names.IGNORED}, sort_keys=True, default=str)
        configurations.setdefault(key, []).append(run)
    labels = _labels(found, folder.name)
    root = folder / GROUPS
    written: dict[str, Path] = {}
    tags: set[str] = set()
    for members in configurations.values():
        finished = [run for run in members if run.status == "finished"]
        chosen = finished or [run for run in members if run.status == "diverged"]  # all diverged: up to where
        events = aggregate(chosen)
        if not events:
            continue
        name = folder_name(labels[id(members[0])], written)
        written[name] = root / name
        tags |= {value.tag for event in events for value in event.summary.value}
        replace_events(root / name, events)
    if not written:  # nothing finished (yet): no groups, and none left from an earlier write
        shutil.rmtree(root, ignore_errors=True)
        return
    for stale in (p for p in root.iterdir() if p.is_dir() and p.name not in written):
        shutil.rmtree(stale, ignore_errors=True)
    replace_events(root, [layout(tags)])


def _labels(found: list[folders.Run], experiment: str) -> dict[int, str]:
    """Each run's configuration label, as compare's rows read it (gdtrain/core/names.py); the experiment's
    name when nothing tells configurations apart."""
    texts = names.labels([run.config for run in found], seeds=False)
    return {id(run): text or experiment for run, text in zip(found, texts)}


def folder_name(label: str, taken: dict[str, Any]) -> str:
    """A label as a folder name: no '/', not hidden, never a run folder's name, at most 120 characters, unique."""
    name = label.replace("/", "∕").replace("\0", "").strip().lstrip(".") or "run"
    if len(name) > 120:
        name = f"{name[:110]}~{hashlib.sha1(label.encode()).hexdigest()[:8]}"
    if runs.RUN_FOLDER.fullmatch(name):
        name += "~"
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name} ({k})", k + 1
    return unique


def aggregate(members: list[folders.Run], prefix: str = SEEDS) -> list[event_pb2.Event]:
    """Mean, min and max over `members` of every tag they all logged, at every step (epoch, for
    …/val and …/test) where each has a finite value, as `<prefix><tag>/mean` etc.: one event per x."""
    if not members:
        return []
    shared = set.intersection(*({tag for row in run.rows for tag in row} for run in members)) - {"step", "epoch"}
    points: dict[int, list[summary_pb2.Summary.Value]] = {}
    for tag in sorted(shared):
        curves = [
            [
                (epoch if tag.endswith(runs.EPOCH_TAG_SUFFIXES) else step, value)
                for step, epoch, value in run.curve(tag)
                if math.isfinite(value)
            ]
            for run in members
        ]
        for x, *figures in zip(*band(curves)):
            points.setdefault(x, []).extend(
                summary_pb2.Summary.Value(tag=f"{prefix}{tag}/{stat}", simple_value=figure)
                for stat, figure in zip(("mean", "min", "max"), figures)
            )
    now = time.time()
    return [
        event_pb2.Event(wall_time=now, step=x, summary=summary_pb2.Summary(value=values))
        for x, values in sorted(points.items())
    ]


def layout(tags: set[str], opening: tuple[str, ...] = OPENING, over: str = "seeds") -> summary_pb2.Summary:
    """A margin chart of each aggregated tag (SEEDS…/mean), each in a section of its own: `opening`'s
    open, in that order; the others closed, below them. `over`: what the band spans, for the titles."""
    # One chart per section: TensorBoard 2.21 shows the charts of one section in reverse order.
    aggregated = sorted(
        tag.removeprefix(SEEDS).removesuffix("/mean") for tag in tags if tag.startswith(SEEDS) and tag.endswith("/mean")
    )
    shown = [tag for tag in opening if tag in aggregated] + [tag for tag in aggregated if tag not in opening]
    categories = []
    for tag in shown:
        series = layout_pb2.MarginChartContent.Series(
            value=f"{SEEDS}{tag}/mean", lower=f"{SEEDS}{tag}/min", upper=f"{SEEDS}{tag}/max"
        )
        chart = layout_pb2.Chart(title=tag, margin=layout_pb2.MarginChartContent(series=[series]))
        categories.append(
            layout_pb2.Category(
                title=f"{tag}: mean over {over}, band from the lowest to the highest",
                chart=[chart],
                closed=tag not in opening,
            )
        )
    # custom_scalar.summary.pb builds the same, but needs TensorFlow: the layout as a string tensor
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        string_val=[layout_pb2.Layout(category=categories).SerializeToString()],
    )
    value = summary_pb2.Summary.Value(
        tag=layout_metadata.CONFIG_SUMMARY_TAG, metadata=layout_metadata.create_summary_metadata(), tensor=tensor
    )
    return summary_pb2.Summary(value=[value])


def replace_events(folder: Path, contents: list[summary_pb2.Summary] | list[event_pb2.Event]) -> None:
    """Make `contents` `folder`'s only event file: written under a name TensorBoard ignores, renamed
    into place, then the older event files removed. The new name sorts after the old ones, as
    TensorBoard expects of a newer file."""
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("events.out.tfevents.*"))
    final = folder / f"events.out.tfevents.{time.time_ns():020d}.gdtrain"
    if old and final.name <= old[-1].name:
        final = folder / (old[-1].name + "-1")
    tmp = folder / f".board-{os.getpid()}.tmp"
    now = time.time()
    try:
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
            for item in contents:
                event = (
                    item if isinstance(item, event_pb2.Event) else event_pb2.Event(wall_time=now, step=0, summary=item)
                )
                writer.write(event.SerializeToString())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for path in old:
        path.unlink(missing_ok=True)
