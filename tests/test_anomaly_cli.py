"""Anomaly detectors end to end on `:smoke` (AnoDDPM, mDDPM); UMA-DDPM (unified) through the two CLIs."""

from __future__ import annotations

import csv
import importlib
import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np

from diffseg_jax.tasks.anomaly import evaluate
from diffseg_jax.train import train_and_evaluate


def smoke_config(name: str, variant: str = ""):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config("smoke" + (f",{variant}" if variant else ""))


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
METRICS = ("dsc", "auprc", "tnr", "tpr", "ssim", "psnr")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def test_uma_ddpm_unified_trains_and_evaluates_through_the_clis_and_writes_every_output(tmp_path):
    workdir = tmp_path / "uma"
    args = ("--config=configs/anomaly_uma_ddpm.py:smoke,unified", f"--workdir={workdir}")
    train = run(
        "run_train.py", *args, "--config.train.steps=2", "--config.train.eval_every=0"
    )  # no validation
    assert train.returncode == 0, train.stderr[-3000:]
    evaluation = run("run_eval.py", *args)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "t1: DSC" in evaluation.stdout and "t2: DSC" in evaluation.stdout

    summary = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert summary["task"] == "anomaly" and summary["checkpoint_step"] > 0
    for name in ("t1", "t2"):
        stats = summary["sequences"][name]
        assert all(math.isfinite(stats[m]["mean"]) for m in METRICS)
        assert 0.0 <= stats["dsc"]["mean"] <= 1.0 and 0.0 <= stats["tnr"]["mean"] <= 1.0
        assert math.isfinite(stats["threshold"])
    rows = list(csv.DictReader((workdir / "eval" / "per_case.csv").open()))
    assert {r["kind"] for r in rows} == {"tumour", "healthy"} and {r["sequence"] for r in rows} == {
        "t1",
        "t2",
    }
    tumour = next(r for r in rows if r["kind"] == "tumour")
    grid = smoke_config("anomaly_uma_ddpm", "unified").data.grid
    for suffix in ("anomaly", "reconstruction", "pred"):
        image = nib.load(workdir / "eval" / "maps" / f"{tumour['case_id']}_t2_{suffix}.nii.gz")
        assert image.shape == tuple(grid)  # H, W, D: the voxel order of the stored affine
    pred = np.asarray(nib.load(workdir / "eval" / "maps" / f"{tumour['case_id']}_t2_pred.nii.gz").dataobj)
    assert set(np.unique(pred)) <= {0, 1}
    assert list((workdir / "eval" / "overlays").glob("*_t2.png"))


# The DAE trains and evaluates in tests/test_faults.py (an evaluation stopped and resumed); mDDPM below,
# whose training and evaluation are pDDPM's but for the corruption (pDDPM's predict: tests/test_tasks.py).
def test_anoddpm_smoke_trains_and_evaluates(tmp_path):
    config = smoke_config("anomaly_anoddpm")
    config.train.steps, config.train.eval_every = 2, 0  # no validation: this is about running end to end
    config.eval.write_predictions = False
    config.eval.num_overlays = 0
    train_and_evaluate(config, tmp_path, progress=False)
    summary = evaluate(config, tmp_path, progress=False)
    assert summary["method"] == config.method
    stats = summary["sequences"]["t2"]
    assert all(math.isfinite(stats[m]["mean"]) for m in METRICS)
    assert (tmp_path / "eval" / "per_case.csv").exists()


def test_mddpm_trained_on_healthy_slices_of_tumour_cases_scores_another_folder(tmp_path):
    """The `real` preset's data path on the smoke sizes: FLAIR, healthy slices of the training fold's cases,
    then the tumours of a folder given at evaluation (`eval.data_root`) scored with that threshold."""
    config = smoke_config("anomaly_mddpm")
    real = importlib.import_module("configs.anomaly_mddpm").get_config("real").data
    d = config.data
    d.healthy_source, d.healthy_margin_mm = real.healthy_source, real.healthy_margin_mm
    d.folds, d.fold_val_cases, d.sequences = 3, 1, "flair"
    config.train.steps, config.train.eval_every = 2, 0
    config.eval.write_predictions, config.eval.num_overlays = False, 0
    train_and_evaluate(config, tmp_path, progress=False)
    from data_pipelines import brats, sources

    folder = sources.dataset_root(config, progress=False)
    config.eval.data_root = str(folder)
    config.eval.output_dir = str(tmp_path / "other")
    summary = evaluate(config, tmp_path, progress=False)
    with_tumour = [c for c in brats.find_cases(folder, require_seg=True) if brats.load_case(c).seg.any()]
    assert summary["method"] == "mddpm"
    assert summary["num_cases"]["test_tumour"] == len(with_tumour) > 1  # every case of that folder
    stats = summary["sequences"]["flair"]
    assert all(math.isfinite(stats[m]["mean"]) for m in METRICS)
    rows = list(csv.DictReader((tmp_path / "other" / "per_case.csv").open()))
    assert {r["case_id"] for r in rows if r["kind"] == "tumour"} == {c.case_id for c in with_tumour}
