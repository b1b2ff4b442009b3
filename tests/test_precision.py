"""Mixed precision (bf16 and fp16 autocast, GradScaler) and torch.compile with its eager fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gdtrain.core.config import load_config
from gdtrain.training import engine, recipe

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def smoke(tmp_path: Path, *overrides: str):
    cfg = load_config(SMOKE, list(overrides))
    return recipe.run(cfg, tmp_path, quiet=True)


def curve(run_dir: Path) -> list[float]:
    return [
        m["loss/train"]
        for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss/train" in m
    ]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_trains_in_the_lower_precision(tmp_path, precision):
    full_dir, full = smoke(tmp_path / "fp32")
    low_dir, low = smoke(tmp_path / precision, f"train.precision={precision}")
    assert low.status == "finished" and low.final["accuracy/val"] >= full.final["accuracy/val"] - 0.05
    assert curve(low_dir) != curve(full_dir)  # the precision really changed the arithmetic
    assert curve(low_dir) == pytest.approx(curve(full_dir), rel=0.05)  # ... and only by rounding


def test_autocast_runs_forward_in_bf16(tmp_path, monkeypatch):
    seen = []
    real = engine.LOSSES["cross_entropy"]
    monkeypatch.setitem(engine.LOSSES, "cross_entropy", lambda out, y: (seen.append(out.dtype), real(out, y))[1])
    _, outcome = smoke(tmp_path, "train.precision=bf16", "train.epochs=1")
    assert seen.count(torch.bfloat16) == outcome.steps  # every training step; validation stays in fp32


def cut_after_first_checkpoint(run_dir: Path) -> Path:
    """Leave `run_dir` as if killed right after its first checkpoint; return that checkpoint."""
    for name in ("summary.json", "model.pt"):
        (run_dir / name).unlink()
    first, *newer = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    for path in newer:
        path.unlink()
    (run_dir / "checkpoints" / "best.pt").unlink()
    return first


def test_fp16_keeps_its_grad_scaler_across_a_resume(tmp_path):
    overrides = ["train.precision=fp16", "train.checkpoint_every=4", "train.log_every=1"]
    reference, _ = smoke(tmp_path / "full", *overrides)
    cut, _ = smoke(tmp_path / "cut", *overrides)
    state = torch.load(cut_after_first_checkpoint(cut), weights_only=True)
    assert state["scaler"]["scale"] > 0
    assert recipe.resume(cut, quiet=True).status == "finished"
    assert (cut / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def test_a_checkpoint_from_before_the_scaler_was_always_saved_resumes(tmp_path):
    overrides = ["train.checkpoint_every=4", "train.log_every=1"]
    reference, _ = smoke(tmp_path / "full", *overrides)
    cut, _ = smoke(tmp_path / "cut", *overrides)
    first = cut_after_first_checkpoint(cut)
    state = torch.load(first, weights_only=True)
    assert state["scaler"] == {}  # a disabled GradScaler's state
    torch.save(state | {"scaler": None}, first)  # what fp32 and bf16 runs saved before
    assert recipe.resume(cut, quiet=True).status == "finished"
    assert (cut / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch, capsys):
    def broken(model, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    eager_dir, _ = smoke(tmp_path / "eager")
    fallback_dir, outcome = smoke(tmp_path / "fallback", "train.compile=true")
    assert outcome.status == "finished"
    assert (
        "warning: train.compile: torch.compile failed (RuntimeError: no C++ compiler found)" in capsys.readouterr().err
    )
    assert curve(fallback_dir) == curve(eager_dir)


def test_compiled_model_trains_and_saves_plain_weights(tmp_path, capsys):
    run_dir, outcome = smoke(tmp_path, "train.compile=true", "train.epochs=1")
    assert "warning" not in capsys.readouterr().err  # it really compiled
    assert outcome.status == "finished"
    weights = torch.load(run_dir / "model.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in weights)
    assert sorted(weights) == sorted(
        torch.load(smoke(tmp_path / "eager", "train.epochs=1")[0] / "model.pt", weights_only=True)
    )


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_trains_in_every_precision(tmp_path, precision):
    run_dir, outcome = smoke(tmp_path, "train.device=cuda", f"train.precision={precision}")
    assert outcome.status == "finished"
    assert json.loads((run_dir / "summary.json").read_text())["environment"]["device"].startswith("cuda")


@needs_cuda
@pytest.mark.gpu
def test_cuda_run_is_deterministic_when_asked(tmp_path):
    first, _ = smoke(tmp_path / "a", "train.device=cuda", "train.deterministic=true")
    second, _ = smoke(tmp_path / "b", "train.device=cuda", "train.deterministic=true")
    assert curve(first) == curve(second)
