"""run_train.py + run_eval.py end to end on the smoke preset, on real files, and on bad input."""

import csv
import json
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import brats, phantom

ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_CASE = ROOT.parent / "shared" / "real" / "BraTS-GLI-00001-000"


def _run(script, *args, check=True):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One smoke training run shared by the evaluation tests."""
    workdir = tmp_path_factory.mktemp("smoke_run")
    _run("run_train.py", "--config=configs/btsegdiff.py:smoke", f"--workdir={workdir}")
    return workdir


def test_train_writes_checkpoints_and_logs(trained):
    assert (trained / "checkpoints" / "6").is_dir()
    assert any((trained / "best").iterdir())
    assert list(trained.glob("events.out.tfevents.*")), "TensorBoard events expected"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["final_step"] == summary["steps_this_run"] == 6
    assert summary["median_step_seconds"] > 0 and summary["num_params"] > 1000


def test_eval_writes_every_output(trained):
    _run("run_eval.py", "--config=configs/btsegdiff.py:smoke", f"--workdir={trained}")
    out = trained / "eval"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["checkpoint_step"] in (3, 6)
    for region in ("wt", "tc", "et"):
        for metric in ("dice", "iou", "hd95", "sensitivity", "specificity"):
            stats = summary["regions"][region][metric]
            assert np.isfinite(stats["mean"]) and np.isfinite(stats["std"])
    assert summary["seconds_per_case"] > 0
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert len(rows) == summary["num_cases"] >= 1
    case_dir = pathlib.Path(phantom.default_cache_dir())
    for row in rows:
        pred = nib.load(out / "predictions" / f"{row['case_id']}_seg.nii.gz")
        unc = nib.load(out / "predictions" / f"{row['case_id']}_uncertainty.nii.gz")
        source = next(case_dir.rglob(f"{row['case_id']}_t1.nii.gz"))
        ref = nib.load(source)
        assert pred.shape == ref.shape == unc.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
        assert float(row["wt_dice"]) >= 0.0
    assert list((out / "overlays").glob("*.png"))


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="the shared real BraTS case is not present")
def test_eval_predicts_a_real_unlabelled_case_on_its_own_grid(trained, tmp_path):
    _run(
        "run_eval.py",
        "--config=configs/btsegdiff.py:smoke",
        f"--workdir={trained}",
        f"--config.eval.data_root={REAL_CASE}",
        f"--config.eval.output_dir={tmp_path}",
    )
    pred = nib.load(tmp_path / "predictions" / f"{REAL_CASE.name}_seg.nii.gz")
    source = nib.load(REAL_CASE / f"{REAL_CASE.name}-t1n.nii.gz")
    assert pred.shape == source.shape == (240, 240, 155)
    np.testing.assert_allclose(pred.affine, source.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}  # BraTS 2023 convention
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["num_cases"] == 1 and summary["regions"] == {}


def test_bad_input_stops_with_one_line_naming_the_file(tmp_path):
    case = tmp_path / "BraTS2021_00000"
    case.mkdir()
    data = np.ones((8, 8, 8), np.float32)
    for name in brats.MODALITIES:
        nib.save(nib.Nifti1Image(data, np.eye(4)), case / f"BraTS2021_00000_{name}.nii.gz")
    (case / "BraTS2021_00000_seg.nii.gz").write_bytes(b"definitely not a nifti file")
    result = _run(
        "run_train.py",
        "--config=configs/btsegdiff.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.root={tmp_path}",
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "BraTS2021_00000_seg.nii.gz" in last


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = _run("run_eval.py", "--config=configs/btsegdiff.py:smoke", f"--workdir={tmp_path}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no checkpoint" in result.stderr.strip().splitlines()[-1]


def test_unknown_config_key_is_one_line(tmp_path):
    result = _run(
        "run_train.py",
        "--config=configs/btsegdiff.py:smoke",
        f"--workdir={tmp_path}",
        "--config.train.stepz=3",
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: bad command line") and "steps" in last
