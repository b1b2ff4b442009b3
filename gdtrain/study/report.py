"""A study's report: report.md (the verdict first), results.json/csv, the chosen configs, figures.

Every number in report.md is formatted from results.json (gdtrain/study/verdict.py computes them), so the
two never disagree; tests/test_study.py checks that they do not.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gdtrain.core.runs import write_json_atomic
from gdtrain.core.yamlio import dump_yaml

FIGURES = {"lr_sensitivity.png": "lr sensitivity: the select metric of every tuning trial against its lr",
           "budget_curve.png": "expected best select value after k trials (Dodge et al. 2019)",
           "reruns.png": "the chosen settings' reruns: mean and min-max band over seeds",
           "final_per_seed.png": "the report metric of every rerun, with its mean and 95% CI"}


def fmt(value: float | None) -> str:
    """A metric as the report prints it: 4 significant digits, or — when absent."""
    return "—" if value is None else f"{value:.4g}"


def _p(value: float) -> str:
    return f"{value:.2f}"


def write(folder: Path, results: dict[str, Any], base: dict[str, Any], meta: Any) -> None:
    """Write every output of a study into its folder."""
    write_json_atomic(folder / "results.json", results)
    _write_csv(folder / "results.csv", results)
    chosen = folder / "chosen"
    chosen.mkdir(exist_ok=True)
    for label, entry in results["optimizers"].items():
        if entry["chosen"] is not None:
            doc = {**base, "experiment": {**(base.get("experiment") or {}), "name": meta.name, "seed": meta.seed + 1},
                   "optimizer": entry["chosen"]}
            (chosen / f"{label}.yaml").write_text(f"# {label}: the setting {results['study']} chose; "
                                                  f"gdtrain run {chosen / (label + '.yaml')}\n" + dump_yaml(doc))
    drawn = _figures(folder, results)
    (folder / "report.md").write_text(markdown(results, drawn), encoding="utf-8")


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """The verdict in plain words: who ties at the top, who beats whom and how surely."""
    groups, seeds, pairs = results["groups"], results["seeds"], results["pairs"]
    names = lambda group: " and ".join(group) if len(group) <= 2 else ", ".join(group[:-1]) + " and " + group[-1]
    if not groups:
        return ["No optimizer has two reruns to compare; see the table."]
    if len(groups) == 1:
        lines = [f"**No detectable difference**: {names(groups[0])} tie on {results['report']} with {seeds} seeds each."]
    else:
        top = groups[0]
        head = f"**{names(top)}** " + ("tie for best" if len(top) > 1 else "is best")
        lines = [f"{head} on {results['report']} ({seeds} seeds each)."]
        for rank, group in enumerate(groups[1:], 2):
            lines.append(f"Group {rank}: {names(group)}" + (" (tied)." if len(group) > 1 else "."))
    for pair in pairs:
        if pair["verdict"] != "no detectable difference":
            winner, loser = pair["verdict"].split(" beats ")
            p = pair["p_a_beats_b"] if winner == pair["a"] else 1 - pair["p_a_beats_b"]
            lo, hi = pair["ci"] if winner == pair["a"] else (1 - pair["ci"][1], 1 - pair["ci"][0])
            lines.append(f"- {winner} beats {loser}: P = {_p(p)}, 95% CI {_p(lo)}–{_p(hi)}")
    ties = [f"{p['a']}–{p['b']}" for p in pairs if p["verdict"] == "no detectable difference"]
    if ties:
        lines.append(f"- no detectable difference with {seeds} seeds: {', '.join(ties)}")
    if results["unranked"]:
        lines.append(f"- not compared (every trial diverged): {', '.join(results['unranked'])}")
    return lines


def _settings(chosen: dict[str, Any] | None) -> str:
    if chosen is None:
        return "all trials diverged"
    return ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in chosen.items()
                     if k not in ("name", "implementation"))


def markdown(results: dict[str, Any], figures: list[str]) -> str:
    """report.md: the verdict, the table, the pairwise matrix and the figures."""
    report, up = results["report"], results["higher_is_better"]
    lines = [f"# Study {results['study']}: which optimizer is better on {report}?", "",
             *verdict_lines(results), "",
             f"Each optimizer had {results['budget']} tuning trials ({results['sampler']} sampler, seed "
             f"{results['tuning_seed']}), chosen on {results['select']}; its best setting was rerun with seeds "
             f"{', '.join(map(str, results['rerun_seeds']))}. P(A beats B) is the chance that a rerun of A scores better "
             f"than one of B (Mann-Whitney U / n·m, ties half); A beats B only when its 95% bootstrap CI lies above 0.5 "
             f"and the one-sided Mann-Whitney test gives p < 0.05. {report}: {'higher' if up else 'lower'} is better.",
             "", "## Optimizers", ""]
    target = results["target"]
    head = ["group", "optimizer", "chosen settings", f"mean {report}", "95% CI", "median", "diverged"]
    head += [f"steps to {results['select']} {fmt(target)}"] if target is not None else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [label for group in results["groups"] for label in group] + results["unranked"]
    for label in order:
        e = results["optimizers"][label]
        r = e["reruns"]
        ci = f"{fmt(r['ci'][0])}–{fmt(r['ci'][1])}" if "ci" in r else "—"
        row = [str(e.get("group", "—")), label, _settings(e["chosen"]), fmt(r.get("mean")), ci, fmt(r.get("median")),
               f"{r['diverged']}/{len(r['values'])}"]
        if target is not None:
            t = e["to_target"]
            row.append("—" if not t or t["steps"] is None else f"{t['steps']['mean']:.0f} ({t['reached']}/{t['of']})")
        lines.append("| " + " | ".join(row) + " |")
    ranked = [label for group in results["groups"] for label in group]
    if len(ranked) > 1:
        lines += ["", "## P(row beats column)", "", "| | " + " | ".join(ranked) + " |", "|" + "---|" * (len(ranked) + 1)]
        p = {(q["a"], q["b"]): q["p_a_beats_b"] for q in results["pairs"]}
        p |= {(b, a): 1 - v for (a, b), v in list(p.items())}
        for a in ranked:
            lines.append(f"| {a} | " + " | ".join("" if a == b else _p(p[(a, b)]) for b in ranked) + " |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{FIGURES[name]}]({name})" for name in figures]
    else:
        lines += ["", "(No figures: matplotlib is not installed; pip install 'gdtrain[plot]'.)"]
    lines += ["", "Every number here is in results.json; the chosen settings are runnable configs in chosen/."]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, results: dict[str, Any]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["optimizer", "group", "chosen", "n", "mean", "median", "std", "ci_low", "ci_high", "diverged"])
        for label, e in results["optimizers"].items():
            r = e["reruns"]
            out.writerow([label, e.get("group", ""), json.dumps(e["chosen"]), len(r["values"]), r.get("mean", ""),
                          r.get("median", ""), r.get("std", ""), *(r.get("ci") or ["", ""]), r["diverged"]])


def _figures(folder: Path, results: dict[str, Any]) -> list[str]:
    """Draw the four figures; the names drawn ([] without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    from gdtrain.study import plot as studyplot

    return studyplot.draw_all(folder, results)
