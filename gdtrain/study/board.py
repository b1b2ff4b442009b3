"""A study's own TensorBoard folder, `<study>/board/`, that answers its question at a glance.

The study folder holds every trial and rerun (hundreds of runs): TensorBoard ticks no run by default
past 40, so its charts open empty. `board/` holds one run per optimizer, named as the report names
it: its reruns' curves as mean, min and max (`seeds/<tag>/…`, every repeat's reruns pooled), its
HParams session (the optimizer, its chosen lr, the report metric's mean first), and a Custom Scalars
layout of one banded line per optimizer. The tuning trials are set apart in `tuning/<optimizer>`:
every trial's curves as mean, min and max under `trials/<tag>/…`, which no chart of the layout
shows. Far fewer than 40 runs, so TensorBoard shows them all without a click. Each trial and rerun
stays an ordinary run of the study folder (`tensorboard --logdir runs/<study>`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from gdtrain.core.folders import Run, read_run
from gdtrain.study.verdict import StudyResults
from gdtrain.training import board

BOARD = "board"  # the folder in the study folder
TUNING = "tuning"  # its subfolder of the tuning trials' aggregates
TRIALS = "trials/"  # their tag prefix: no chart of the layout shows it


def write(folder: Path, results: StudyResults) -> Path:
    """`folder`/board/ from the study's results and run folders, replacing what was there; its path."""
    root = folder / BOARD
    shutil.rmtree(root, ignore_errors=True)
    setup = results.setup
    metrics = list(dict.fromkeys([setup.report, setup.select, "loss/train"]))
    tags: set[str] = set()
    names: dict[str, str] = {}
    for label, result in results.optimizers.items():
        name = board.folder_name(label, names)
        names[name] = label
        reruns = [read_run(Path(p)) for p in result.reruns.run_dirs if p is not None]
        finished = [run for run in reruns if run.status == "finished"]
        events = board.aggregate(finished)
        tags |= {value.tag for event in events for value in event.summary.value}
        lr = next((choice.settings["lr"] for choice in result.choices if choice.settings), None)
        session = board.session_start({"optimizer": label, "chosen lr (repeat 1)": lr}, name)
        means = _means(finished, metrics)
        board.replace_events(root / name, [session, *_scalars(means), *events])
        trials = [read_run(Path(t.run_dir)) for tuning in result.tunings for t in tuning.trials]
        board.replace_events(
            root / TUNING / name, board.aggregate([t for t in trials if t.status == "finished"], TRIALS)
        )
    over = "the reruns (every repeat's)"
    board.replace_events(root, [_experiment(list(names), metrics), board.layout(tags, tuple(metrics), over)])
    return root


def _means(runs: list[Run], metrics: list[str]) -> dict[str, float]:
    """Each metric's mean over the runs' last values: the HParams table's figures for an optimizer."""
    means = {}
    for tag in metrics:
        last = [curve[-1][2] for run in runs if (curve := run.curve(tag))]
        if last:
            means[tag] = sum(last) / len(last)
    return means


def _scalars(means: dict[str, float]) -> list[summary_pb2.Summary]:
    return [summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v)]) for t, v in means.items()]


def _experiment(labels: list[str], metrics: list[str]) -> summary_pb2.Summary:
    """The HParams experiment: the optimizer and its chosen lr, then the report metric first."""
    infos = [
        api_pb2.HParamInfo(name="optimizer", type=api_pb2.DATA_TYPE_STRING, differs=True),
        api_pb2.HParamInfo(name="chosen lr (repeat 1)", type=api_pb2.DATA_TYPE_FLOAT64, differs=True),
    ]
    summary_v2.Discrete(labels).update_hparam_info(infos[0])
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[summary_v2.Metric(tag).as_proto() for tag in metrics]
    )
    return board.plugin_summary(
        hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)
    )
