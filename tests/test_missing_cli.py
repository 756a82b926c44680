"""Missing sequences end to end on the smoke presets: synthesis, segmentation from subsets, fill-in."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest

from configs import btsegdiff, m2dn, shaspec, synthesis_unet
from data_pipelines.brats import DataError
from diffseg_jax import parallel
from diffseg_jax.modalities import MODALITIES, all_subsets
from diffseg_jax.tasks import segmentation, synthesis
from diffseg_jax.tasks.fill_in import make_fill_in
from diffseg_jax.train import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def m2dn_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("m2dn")
    run("run_train.py", "--config=configs/m2dn.py:smoke", f"--workdir={workdir}")
    return workdir


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory):
    """BTSegDiff trained with sequence dropout (in-process: the CLI path is test_cli's)."""
    workdir = tmp_path_factory.mktemp("btsegdiff_dropout")
    config = btsegdiff.get_config("smoke")
    config.train.sequence_dropout = 0.5
    train_and_evaluate(config, workdir, progress=False)
    return config, workdir


def test_m2dn_synthesises_every_pattern_through_the_clis(m2dn_run):
    result = run("run_eval.py", "--config=configs/m2dn.py:smoke", f"--workdir={m2dn_run}")
    assert all(f"{seq}: PSNR" in result.stdout for seq in MODALITIES)
    summary = json.loads((m2dn_run / "eval" / "metrics.json").read_text())
    assert summary["task"] == "synthesis" and len(summary["patterns"]) == 14
    for seq in MODALITIES:  # each sequence is missing in 7 of the 14 patterns
        assert sum(seq in by_seq for by_seq in summary["patterns"].values()) == 7
        assert math.isfinite(summary["per_sequence"][seq]["psnr"]["mean"])
        assert math.isfinite(summary["baseline_mean"]["per_sequence"][seq]["psnr"]["mean"])
    written = sorted((m2dn_run / "eval" / "synthesis").glob("*.nii.gz"))
    assert len(written) == 4  # one case (num_overlays = 1) x the four single-missing patterns
    assert len(nib.load(written[0]).shape) == 3


def test_regressor_baseline_trains_and_evaluates(tmp_path):
    config = synthesis_unet.get_config("smoke")
    assert config.method == "synthesis_unet" and config.task == "synthesis"
    train_and_evaluate(config, tmp_path, progress=False)
    summary = synthesis.evaluate(config, tmp_path, progress=False)
    assert summary["method"] == "synthesis_unet" and len(summary["patterns"]) == 14
    assert all(math.isfinite(s["psnr"]["mean"]) for s in summary["per_sequence"].values())


def test_fill_in_synthesises_only_the_zeroed_sequences(m2dn_run):
    config = btsegdiff.get_config("smoke")
    config.eval.fill_in_workdir = str(m2dn_run)
    config.eval.fill_in_config = "configs/m2dn.py:smoke"
    fill = make_fill_in(config, parallel.make_mesh())
    size = config.data.image_size
    images = np.random.default_rng(0).normal(size=(5, size, size, 4)).astype(np.float32)
    images[..., 1] = 0.0  # t1ce missing
    images[2:, ..., 3] = 0.0  # and flair in the last three slices
    out = fill(images, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(out[..., [0, 2]], images[..., [0, 2]])
    np.testing.assert_array_equal(out[:2, ..., 3], images[:2, ..., 3])
    assert np.all(np.abs(out[..., 1]).mean(axis=(1, 2)) > 0)
    assert np.all(np.abs(out[2:, ..., 3]).mean(axis=(1, 2)) > 0)


def test_each_subset_evaluated_once_with_the_fill_in_route(m2dn_run, dropout_run):
    _, workdir = dropout_run
    out_dir = workdir / "subsets_eval"
    result = run(
        "run_eval.py",
        "--config=configs/btsegdiff.py:smoke",
        f"--workdir={workdir}",
        "--config.eval.available=each",
        "--config.eval.max_cases=1",
        f"--config.eval.output_dir={out_dir}",
        f"--config.eval.fill_in_workdir={m2dn_run}",
        "--config.eval.fill_in_config=configs/m2dn.py:smoke",
    )
    assert "**mean**" in result.stdout and "t1 + t1ce + t2 + flair" in result.stdout
    table = json.loads((out_dir / "subsets.json").read_text())
    assert list(table["dice"]) == [",".join(s) for s in all_subsets()]
    assert len(set(table["dice"])) == 15
    for subset in all_subsets():
        summary = json.loads((out_dir / "subsets" / "+".join(subset) / "metrics.json").read_text())
        assert summary["available"] == ",".join(subset) and summary["fill_in"] == str(m2dn_run)
        assert all(0.0 <= summary["regions"][r]["dice"]["mean"] <= 1.0 for r in ("wt", "tc", "et"))
    assert not (out_dir / "predictions").exists()


def test_fill_in_must_be_a_synthesis_model(dropout_run):
    config, workdir = dropout_run
    config = config.copy_and_resolve_references()
    config.eval.fill_in_workdir = str(workdir)
    config.eval.fill_in_config = "configs/btsegdiff.py:smoke"
    with pytest.raises(DataError, match="not a synthesis method"):
        segmentation.evaluate(config, workdir, progress=False)
    config.eval.fill_in_workdir = None
    config.eval.available = "flair,pd"
    with pytest.raises(DataError, match="eval.available"):
        segmentation.evaluate(config, workdir, progress=False)


def test_shaspec_segments_from_flair_alone(tmp_path):
    config = shaspec.get_config("smoke")
    train_and_evaluate(config, tmp_path, progress=False)
    config.eval.available = "flair"
    summary = segmentation.evaluate(config, tmp_path, progress=False)
    assert summary["available"] == "flair" and summary["num_cases"] >= 1
    assert all(0.0 <= summary["regions"][r]["dice"]["mean"] <= 1.0 for r in ("wt", "tc", "et"))


def test_m2dn_config_is_the_regressor_s_but_for_the_method():
    a, b = m2dn.get_config("smoke"), synthesis_unet.get_config("smoke")
    assert a.model == b.model and a.data == b.data and a.train == b.train and b.method != a.method
