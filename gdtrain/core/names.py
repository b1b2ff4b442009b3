"""Short names for runs and configurations, built here once: a sweep's folders, compare's rows, the plots.

A label says what tells a config apart from the others of its set (a sweep's points, the runs that
compare reads): the optimizer's name first, its lr always, then each other setting that varies, in
a short form, and the seed as s<seed> when seeds vary:

    adam lr=0.001 s1            sgd lr=0.05 mom=0.9 nesterov         adamw lr=0.003 wd=0.1 betas=0.9,0.99

Settings of a named section count only among configs of the same name: sgd's momentum 0 and 0.9
tell two sgd runs apart, adam's default eps against adagrad's tells nothing. A true flag is its bare
word (`nesterov`, `amsgrad`, `centered`), a false one is left out. The folder form drops the spaces
and the `=` before a number: `adam-lr0.001-s1`, `sgd-lr0.05-mom0.9-nesterov`; a sweep's run folder
is that plus the time (runs.new_run_dir), so TensorBoard's run list, compare's rows and the plot
legends read alike. Torch-free.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from gdtrain.core import optimizers as registry

SHORT = {  # how a setting reads in a label; any other by the last part of its dotted path
    **registry.short_names(),  # the optimizers' own: mom, wd, damp, acc0, ...
    "optimizer.implementation": "impl",
    "optimizer.rest.lr": "rest_lr",  # muon's optimizer for the biases
    "model.hidden_sizes": "hidden",
    "model.activation": "act",
    "train.batch_size": "batch",
    "train.grad_clip": "clip",
    "schedule.warmup_steps": "warmup",
    "data.n_samples": "n",
}
IGNORED = ("experiment.seed", "experiment.run_name")  # the seed is s<seed>; run_name names one run only
FIRST = ("optimizer.name", "optimizer.lr")  # always shown, in this order


def _text(value: Any, precise: bool = False) -> str:
    """A value as it reads in a label: 0.001, 1e-05, 0.9,0.999, mlp."""
    if isinstance(value, float):
        return repr(value) if precise else format(value, "g")
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v, precise) if not isinstance(v, (list, tuple, dict)) else json.dumps(v) for v in value)
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


def _varies(configs: list[dict[str, Any]], key: str) -> bool:
    return len({json.dumps(c[key], default=str) for c in configs if key in c}) > 1


def _peers(configs: list[dict[str, Any]], config: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The configs with `config`'s section name for `key` (all of them when the section has no name)."""
    name_key = key.rsplit(".", 1)[0] + ".name"
    return [c for c in configs if c.get(name_key) == config.get(name_key)]


def label_keys(configs: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    """The keys `config`'s label shows: FIRST, then the optimizer's other settings that vary among
    its peers, then those of the other sections."""
    varying = [
        key
        for key in config
        if key not in IGNORED
        and key not in FIRST
        and _varies(configs if key.endswith(".name") else _peers(configs, config, key), key)
    ]
    return (
        [key for key in FIRST if key in config]
        + [key for key in varying if key.startswith("optimizer.")]
        + [key for key in varying if not key.startswith("optimizer.")]
    )


def _short(keys: set[str]) -> dict[str, str]:
    """Each key's short form (SHORT, else its last part); the full dotted key where two would clash."""
    short = {
        key: SHORT.get(key) or (key.split(".")[0] if key.endswith(".name") else key.split(".")[-1]) for key in keys
    }
    counts = Counter(short.values())
    return {key: s if counts[s] == 1 else key for key, s in short.items()}


def parts(configs: list[dict[str, Any]], seeds: bool = True) -> list[list[tuple[str, str]]]:
    """Per config (flat: {"optimizer.lr": 0.1, ...}), its label as (key, value) parts; a bare word
    (the optimizer's name, a true flag) has key "". With `seeds`, s<seed> ends it when seeds vary."""
    chosen = [label_keys(configs, config) for config in configs]
    short = _short({key for keys in chosen for key in keys})
    with_seed = seeds and _varies(configs, "experiment.seed")

    def build(precise: bool) -> list[list[tuple[str, str]]]:
        built = []
        for config, keys in zip(configs, chosen):
            these = []
            for key in keys:
                value = config[key]
                if key == "optimizer.name":
                    these.append(("", registry.display_name(_text(value))))
                elif isinstance(value, bool):
                    these += [("", short[key])] if value else []
                else:
                    these.append((short[key], _text(value, precise)))
            if with_seed and "experiment.seed" in config:
                these.append(("s", _text(config["experiment.seed"])))
            built.append(these)
        return built

    rough, exact = build(False), build(True)
    distinct = len({json.dumps(p) for p in exact})
    return rough if len({json.dumps(p) for p in rough}) == distinct else exact  # 0.1 and 0.1000001 differ


def label(these: list[tuple[str, str]]) -> str:
    """`adam lr=0.001 s1` from its parts."""
    return " ".join(value if not key else f"{key}{value}" if key == "s" else f"{key}={value}" for key, value in these)


def folder(these: list[tuple[str, str]]) -> str:
    """`adam-lr0.001-s1`: the parts as one safe folder name (config.check_name), at most 100 characters."""
    words = []
    for key, value in these:
        joined = f"{key}{value}" if not key or re.match(r"[-+.\d]", value) else f"{key}={value}"
        words.append(re.sub(r"[^A-Za-z0-9._=,+-]+", "_", joined))
    text = re.sub(r"\.{2,}", ".", "-".join(words)).lstrip("-._=,+")
    return text[:100].rstrip("-") or "run"


def labels(configs: list[dict[str, Any]], seeds: bool = True) -> list[str]:
    """The label of each config among `configs` (flat), e.g. `sgd lr=0.05 mom=0.9 s2`."""
    return [label(p) for p in parts(configs, seeds)]


def folders(configs: list[dict[str, Any]], seeds: bool = True) -> list[str]:
    """The folder form of each label, e.g. `sgd-lr0.05-mom0.9-s2`."""
    return [folder(p) for p in parts(configs, seeds)]
