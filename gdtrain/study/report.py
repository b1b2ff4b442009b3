"""A study's report: report.md (the verdict first), results.json/csv, the chosen configs, figures.

Every number in report.md is formatted from the StudyResults that results.json is written from
(gdtrain/study/verdict.py computes them), so the two never disagree; tests/test_study.py checks that they do not.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from gdtrain.core import metrics
from gdtrain.core.errors import UserError
from gdtrain.core.runs import write_atomic, write_json_atomic
from gdtrain.core.yamlio import dump_yaml
from gdtrain.report.stats import Pair
from gdtrain.study.verdict import StudyResults

FIGURES = {
    "lr_sensitivity.png": "lr sensitivity: the select metric of every tuning trial against its lr",
    "budget_curve.png": "expected best select value after k trials (Dodge et al. 2019)",
    "reruns.png": "the chosen settings' reruns: mean and min-max band over seeds",
    "final_per_seed.png": "the report metric of every rerun, with its mean and 95% CI",
}


def fmt(value: float | None) -> str:
    """A metric as the report prints it: 4 significant digits, or — when absent."""
    return "—" if value is None else f"{value:.4g}"


def _p(value: float) -> str:
    return f"{value:.2f}"


def write(folder: Path, results: StudyResults, base: dict[str, Any], meta: Any, again: str) -> None:
    """Write every output of a study into its folder, each file whole or not at all: a write that
    fails (a full disk) is a UserError naming the folder and `again`, the command that writes them."""
    try:
        _write(folder, results, base, meta)
    except OSError as err:
        raise UserError(
            f"{folder}: cannot write the study's report ({err.strerror or err}); every run is kept: "
            f"free some space, then: {again}"
        ) from None


def _write(folder: Path, results: StudyResults, base: dict[str, Any], meta: Any) -> None:
    write_json_atomic(folder / "results.json", results.to_json())
    _write_csv(folder / "results.csv", results)
    chosen = folder / "chosen"
    chosen.mkdir(exist_ok=True)
    for label, entry in results.optimizers.items():
        for tuning in entry.tunings:
            if tuning.chosen is None:
                continue
            name = label if tuning.repeat == 1 else f"{label}-r{tuning.repeat}"  # as the repeat's run names
            doc = {
                **base,
                "experiment": {**(base.get("experiment") or {}), "name": meta.name, "seed": meta.seed + 1},
                "optimizer": tuning.chosen,
            }
            which = "" if results.setup.repeats == 1 else f" in repeat {tuning.repeat}"
            text = (
                f"# {label}: the setting {results.setup.study} chose{which}; "
                f"gdtrain run {chosen / (name + '.yaml')}\n" + dump_yaml(doc)
            )
            write_atomic(chosen / f"{name}.yaml", text.encode())  # an empty one would train the default
    drawn = _figures(folder, results)
    from gdtrain.study import board  # TensorBoard's protobufs: only when a study is written

    board.write(folder, results)
    write_atomic(folder / "report.md", markdown(results, drawn).encode())


def _p_beats(pair: Pair, name: str) -> float:
    """P(`name` beats the other of the pair)."""
    return pair.p_a_beats_b if name == pair.a else 1 - pair.p_a_beats_b


def _ci_beats(pair: Pair, name: str) -> tuple[float, float]:
    """The 95% CI of P(`name` beats the other of the pair)."""
    lo, hi = pair.ci
    return (lo, hi) if name == pair.a else (1 - hi, 1 - lo)


def verdict_lines(results: StudyResults) -> list[str]:
    """The verdict in plain words: who ties at the top, who beats whom and how surely."""
    order, best, pairs, setup = results.order, results.best, results.pairs, results.setup
    report, runs = setup.report, _runs_each(setup)

    def names(group: list[str]) -> str:
        return " and ".join(group) if len(group) <= 2 else ", ".join(group[:-1]) + " and " + group[-1]

    if not order:
        return ["No optimizer to compare; see the table."]
    if len(order) == 1:
        return [f"One optimizer, {order[0]}: nothing to compare it with."]
    if len(best) == len(order):
        lines = [f"**No detectable difference**: {names(list(order))} tie on {report} with {runs} each."]
        if results.detectable is None:
            lines.append(
                f"This design could not have declared any difference: with {len(order)} optimizers and "
                f"{setup.seeds} seeds the smallest possible p is above 0.05 after Holm's adjustment; "
                "add seeds or repeats."
            )
    else:
        head = f"**{names(list(best))}** " + ("tie for best" if len(best) > 1 else "is best")
        lines = [f"{head} on {report} ({runs} each)."]
        marks = ", ".join(f"{label} {results.optimizers[label].group}" for label in order)
        lines.append(f"Letters (optimizers that share one show no detectable difference): {marks}.")
    test = "over the repeats" if setup.repeats >= 2 else "two-sided"
    for pair in pairs:
        if pair.winner is not None:
            lo, hi = _ci_beats(pair, pair.winner)
            lines.append(
                f"- {pair.winner} beats {pair.loser}: P = {_p(_p_beats(pair, pair.winner))}, 95% CI {_p(lo)}–{_p(hi)}, "
                f"p = {fmt(pair.p_adjusted)} ({test}, Holm over {len(pairs)} pairs)"
            )
    ties = [f"{p.a}–{p.b}" for p in pairs if p.winner is None]
    if ties:
        lines.append(f"- no detectable difference with {runs}: {', '.join(ties)}")
    never = [label for label, e in results.optimizers.items() if not e.reruns.finished]
    if never:
        lines.append(f"- no rerun finished (ranked last): {', '.join(never)}")
    return lines


def _runs_each(setup: Any) -> str:
    if setup.repeats >= 2:
        return f"{setup.repeats} repeats of {setup.seeds} seeds"
    return f"{setup.seeds} seeds"


def scope_lines(results: StudyResults) -> list[str]:
    """What the verdict is about: what was tuned over which range, what was fixed, the budget, repeats and seeds,
    and the smallest difference the design could detect."""
    setup = results.setup
    lines = [f"- Tuned, {setup.budget} trials per optimizer ({setup.sampler}), chosen on {setup.select}:"]
    lines += [f"  - {label}: {text}" for label, text in setup.scope]
    if setup.repeats >= 2:
        lines.append(
            f"- Repeats: {setup.repeats} independent tune → choose → rerun pipelines per optimizer (tuning seeds "
            f"{', '.join(map(str, setup.repeat_seeds))}), each chosen setting rerun on {setup.seeds} fresh seeds. "
            "The claims and intervals are over the pipelines: they include how much tuning itself varies."
        )
    else:
        lines.append(
            f"- Tuned once (tuning seed {setup.tuning_seed}), the chosen setting rerun on seeds "
            f"{', '.join(map(str, setup.rerun_seeds))}. The claims and intervals are about these chosen settings, "
            "not about each optimizer tuned anew; `repeats: 3` or more includes the variance of tuning."
        )
    sd = results.seed_sd
    if results.detectable is None:
        lines.append(
            f"- This design cannot declare any difference: with {len(results.order)} optimizers and {setup.seeds} "
            "seeds the smallest possible p is above 0.05 after Holm's adjustment; add seeds or repeats."
        )
    else:
        lines.append(
            f"- Detectable: a difference in mean {setup.report} needs to be at least {fmt(results.detectable)} to be "
            f"found with 80% power at the spread seen (reruns' std {fmt(sd)}"
            + (f", tuning adds a std of {fmt(results.tuning_sd)} to a repeat's mean)." if setup.repeats >= 2 else ").")
        )
    return lines


def choice_lines(results: StudyResults) -> list[str]:
    """Each repeat's choice per optimizer: what it chose, its lead over the runner-up, and what its reruns gave."""
    setup = results.setup
    head = [
        "optimizer",
        "repeat",
        "chosen",
        f"{setup.select}",
        "lead over runner-up",
        "reruns' std",
        f"mean {setup.report}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in results.order:
        for c in results.optimizers[label].choices:
            lead = "—" if c.margin is None else fmt(c.margin) + (" (near tie)" if c.near_tie else "")
            chosen = "every trial diverged" if c.settings is None else _settings(c.settings)
            row = [label, str(c.repeat), chosen, fmt(c.select_value), lead, fmt(c.noise), fmt(c.mean)]
            lines.append("| " + " | ".join(row) + " |")
    ties = sum(c.near_tie for e in results.optimizers.values() for c in e.choices)
    lines += [
        "",
        f"A near tie ({ties} here): the runner-up's {setup.select} is within the chosen setting's rerun noise, "
        "so which of the two was chosen is chance.",
    ]
    if setup.repeats >= 2:
        moved = []
        for label in results.order:
            means = [c.mean for c in results.optimizers[label].choices if c.mean is not None]
            if len(means) >= 2:
                moved.append(f"{label} {fmt(min(means))}–{fmt(max(means))}")
        lines.append(f"How much the choice moved the result (the repeats' means): {'; '.join(moved)}.")
    return lines


def _settings(chosen: dict[str, Any] | None) -> str:
    if chosen is None:
        return "all trials diverged"
    return ", ".join(
        f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in chosen.items() if k not in ("name", "implementation")
    )


def markdown(results: StudyResults, figures: list[str]) -> str:
    """report.md: the verdict, the table, the pairwise matrix and the figures."""
    setup = results.setup
    report = setup.report
    lines = [
        f"# Study {setup.study}: which optimizer is better on {report}?",
        "",
        *verdict_lines(results),
        "",
        "## Scope",
        "",
        *scope_lines(results),
        "",
        f"P(A beats B) is the chance that a rerun of A scores better than one of B (Mann-Whitney U / n·m, ties "
        f"half; a diverged rerun below every finished one). A beats B only when {_test(setup)}, Holm-adjusted over "
        f"the {len(results.pairs)} pairs, gives p < 0.05: every claim together holds at a 5% family-wise error "
        f"rate. {report}: {metrics.direction(report)} is better.",
        "",
        "## Optimizers",
        "",
    ]
    target = setup.target
    head = ["group", "optimizer", "chosen settings", f"mean {report}", "95% CI", "median", "diverged"]
    head += [f"steps to {setup.select} {fmt(target)}"] if target is not None else []
    summaries = [results.optimizers[label].reruns.summary for label in results.ranked]
    unsure = any(s is not None and not s.reliable for s in summaries)  # then a column says which CI to distrust
    head += ["95% CI reliable"] if unsure else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in results.ranked:
        e = results.optimizers[label]
        r, s = e.reruns, e.reruns.summary
        row = [
            e.group,
            label,
            _settings(e.tuning.chosen) if setup.repeats == 1 else f"{len(e.chosen_trials)} choices, below",
            fmt(s.mean if s else None),
            f"{fmt(s.ci[0])}–{fmt(s.ci[1])}" if s else "—",
            fmt(s.median if s else None),
            f"{r.diverged}/{len(r.values)}",
        ]
        if target is not None:
            t = e.to_target
            row.append("—" if t is None or t.steps is None else f"{t.steps.mean:.0f} ({t.reached}/{t.of})")
        if unsure:
            row.append("—" if s is None else "yes" if s.reliable else f"no (unreliable: {s.unreliable})")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Choices" + (", repeat by repeat" if setup.repeats >= 2 else ""), "", *choice_lines(results)]
    ranked = results.ranked
    if len(ranked) > 1:
        lines += [
            "",
            "## P(row beats column)",
            "",
            "| | " + " | ".join(ranked) + " |",
            "|" + "---|" * (len(ranked) + 1),
        ]
        p = {(q.a, q.b): q.p_a_beats_b for q in results.pairs}
        p |= {(b, a): 1 - v for (a, b), v in list(p.items())}
        for a in ranked:
            lines.append(f"| {a} | " + " | ".join("" if a == b else _p(p[(a, b)]) for b in ranked) + " |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{FIGURES[name]}]({name})" for name in figures]
    else:
        lines += ["", "(No figures: matplotlib is not installed; pip install 'gdtrain[plot]'.)"]
    lines += ["", "Every number here is in results.json; the chosen settings are runnable configs in chosen/."]
    return "\n".join(lines) + "\n"


def _test(setup: Any) -> str:
    if setup.repeats >= 2:
        return (
            "Welch's t test of the pipelines' means (an exact permutation test of their mean ranks when a "
            "rerun diverged)"
        )
    return "the two-sided exact Mann-Whitney test"


def _write_csv(path: Path, results: StudyResults) -> None:
    f = io.StringIO(newline="")
    out = csv.writer(f)
    head = ["optimizer", "group", "chosen", "n", "mean", "median", "std", "ci_low", "ci_high", "diverged"]
    out.writerow([*head, "ci_reliable"])
    for label, e in results.optimizers.items():
        r, s = e.reruns, e.reruns.summary
        figures = [s.mean, s.median, s.std, *s.ci] if s else ["", "", "", "", ""]
        out.writerow(
            [
                label,
                "" if e.group is None else e.group,
                json.dumps(e.tuning.chosen if len(e.tunings) == 1 else [t.chosen for t in e.tunings]),
                len(r.values),
                *figures,
                r.diverged,
                "" if s is None else s.reliable,
            ]
        )
    write_atomic(path, f.getvalue().encode())


def _figures(folder: Path, results: StudyResults) -> list[str]:
    """Draw the four figures; the names drawn ([] without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    from gdtrain.study import plot as studyplot

    return studyplot.draw_all(folder, results)
