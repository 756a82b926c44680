"""run_train.py + run_eval.py end to end on the smoke preset, on real files, and on bad input."""

import csv
import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import require_real_data

from configs import btsegdiff
from data_pipelines import brats, phantom

ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_CASE = ROOT.parent / "shared" / "real" / "BraTS-GLI-00001-000"
SMOKE = "--config=configs/btsegdiff.py:smoke"


@pytest.fixture(scope="module")
def trained(trained_run):
    """The suite's one BTSegDiff smoke run through run_train.py (shared with other test files)."""
    return trained_run("btsegdiff-smoke", SMOKE)


def test_train_writes_checkpoints_and_logs(trained):
    assert (trained / "checkpoints" / "6").is_dir()
    assert any((trained / "best").iterdir())
    assert list(trained.glob("events.out.tfevents.*")), "TensorBoard events expected"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["final_step"] == summary["steps_this_run"] == 6 and summary["finished"] is True
    assert summary["median_step_seconds"] > 0 and summary["num_params"] > 1000


def test_eval_writes_every_output(trained, cli):
    cli("run_eval.py", SMOKE, f"--workdir={trained}")
    out = trained / "eval"
    summary = json.loads((out / "metrics.json").read_text())
    best_steps = [int(p.name) for p in (trained / "best").iterdir() if p.name.isdigit()]
    assert [summary["checkpoint_step"]] == best_steps  # eval.checkpoint=best by default
    for region in ("wt", "tc", "et"):
        for metric in ("dice", "iou", "hd95", "sensitivity", "specificity", "qu_score", "ueo", "ece"):
            stats = summary["regions"][region][metric]
            assert np.isfinite(stats["mean"]) and np.isfinite(stats["std"])
        assert 0.0 <= summary["regions"][region]["qu_score"]["mean"] <= 1.0
        pooled = summary["calibration"][region]
        assert 0.0 <= pooled["ece"] <= 1.0 and sum(pooled["count"]) > 0
    assert (out / "reliability.png").stat().st_size > 0
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
        for written in (pred, unc):  # the source's geometry: it opens over the scan in a viewer
            np.testing.assert_allclose(written.affine, ref.affine)
            np.testing.assert_allclose(written.header.get_qform(), ref.header.get_qform())
            assert written.header.get_zooms() == ref.header.get_zooms()
            assert int(written.header["sform_code"]) == int(ref.header["sform_code"])
        assert pred.get_data_dtype() == np.uint8 and unc.get_data_dtype() == np.float32
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
        assert float(row["wt_dice"]) >= 0.0 and 0.0 <= float(row["et_ueo"]) <= 1.0
    assert list((out / "overlays").glob("*.png"))


def test_eval_predicts_a_real_unlabelled_case_on_its_own_grid(trained, tmp_path, cli):
    require_real_data(REAL_CASE)
    cli(
        "run_eval.py",
        SMOKE,
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


def test_bad_input_stops_with_one_line_naming_the_file(tmp_path, cli):
    case = tmp_path / "BraTS2021_00000"
    case.mkdir()
    data = np.ones((8, 8, 8), np.float32)
    for name in brats.MODALITIES:
        nib.save(nib.Nifti1Image(data, np.eye(4)), case / f"BraTS2021_00000_{name}.nii.gz")
    (case / "BraTS2021_00000_seg.nii.gz").write_bytes(b"definitely not a nifti file")
    result = cli(
        "run_train.py",
        SMOKE,
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.root={tmp_path}",
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "BraTS2021_00000_seg.nii.gz" in last
    assert not list((tmp_path / "run").glob("checkpoints/*")), "stopped before the first step"


def test_missing_checkpoint_is_a_clear_error(tmp_path, cli):
    result = cli("run_eval.py", SMOKE, f"--workdir={tmp_path}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no checkpoint" in result.stderr.strip().splitlines()[-1]
    unknown_run = cli("run_eval.py", f"--workdir={tmp_path}", check=False)  # no --config, no kept config
    assert unknown_run.returncode != 0 and unknown_run.stderr.strip().splitlines()[-1] == (
        f"error: python run_eval.py needs --config=<method>[:<preset>] (the run in {tmp_path} kept no "
        "config.json); --help shows the usage"
    )


def test_unknown_config_key_is_one_line_naming_the_nearest_field(tmp_path, cli):
    result = cli("run_train.py", SMOKE, f"--workdir={tmp_path}", "--config.train.stepz=3", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config field config.train.stepz; did you mean config.train.steps?"
    )


def test_command_line_messages_name_the_field_or_file_without_class_paths():
    from diffseg_jax import command_line

    smoke = ["--config=configs/btsegdiff.py:smoke"]
    assert command_line.unknown_field([*smoke, "--config.trian.steps=2"]) == (
        "unknown config field config.trian.steps; did you mean config.train?"
    )
    assert command_line.unknown_field([*smoke, "--config.train.steps=2", "--config.eval.zzz=1"]).startswith(
        "unknown config field config.eval.zzz; config.eval has available, batch_size, "
    )
    assert command_line.unknown_field([*smoke, "--config.train.steps=2"]) is None  # every field exists
    message = "diffseg_jax.vocabulary.ConfigError: unknown preset 'x'; expected one of smoke"
    assert command_line.strip_class_path(message) == "unknown preset 'x'; expected one of smoke"
    assert command_line.strip_class_path("ValueError: boom") == "boom"
    missing = command_line.config_load_error(["--config=configs/nothere.py"], OSError("earlier failure"))
    assert missing == "--config: no config file configs/nothere.py"


def test_help_exits_0_and_print_config_shows_the_resolved_fields(cli):
    result = cli("run_train.py", "--help")
    assert "--print_config" in result.stdout and "real" in result.stdout
    printed = cli(
        "run_eval.py", "--config=configs/btsegdiff.py:real", "--config.train.steps=7", "--print_config"
    )
    assert "image_size: 128" in printed.stdout and "steps: 7" in printed.stdout
    assert "fold_val_cases: 1" in printed.stdout
    config = btsegdiff.get_config("real")
    config.train.steps = 7
    assert yaml.load(printed.stdout, Loader=yaml.UnsafeLoader) == config.to_dict()  # parses back (tuples too)


def test_unknown_task_is_one_line_listing_the_known_ones(tmp_path, cli):
    result = cli("run_eval.py", SMOKE, f"--workdir={tmp_path}", "--config.task=segmentaton", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: unknown task 'segmentaton'; known tasks: anomaly, segmentation, synthesis"


def test_shared_brats2013_cases_train_and_evaluate_through_a_layout_file(tmp_path, cli):
    real = ROOT.parent / "shared" / "real" / "brats2013-two-sequences"
    require_real_data(real)
    data = [
        f"--config.data.root={real}",
        "--config.data.layout=configs/layouts/brats2013_two_sequences.json",
        "--config.data.available=t1ce,flair",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
    ]
    unet = "--config=configs/unet_baseline.py:smoke"  # the cheapest network: this is about the data
    cli(
        "run_train.py",
        unet,
        f"--workdir={tmp_path}",
        "--config.train.steps=2",
        "--config.train.eval_every=0",
        *data,
    )
    kept = json.loads((tmp_path / "config.json").read_text())
    assert kept["config_file"] == f"{ROOT / 'configs' / 'unet_baseline.py'}:smoke"
    assert kept["config"]["data"]["root"] == str(real) and kept["config"]["train"]["steps"] == 2
    refused = cli("run_eval.py", f"--workdir={tmp_path}", "--config.data.image_size=64", check=False)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1] == (
        f"error: data.image_size=64: the run in {tmp_path} was trained with data.image_size=32; "
        "to score other cases use --config.eval.data_root"
    )
    # Only the workdir: the run's own config, so its folder's test case and not the phantom's.
    evaluated = cli("run_eval.py", f"--workdir={tmp_path}")
    assert evaluated.stdout.strip().splitlines()[-1] == f"outputs: {tmp_path / 'eval'}"
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["num_cases"] == 1 and set(summary["regions"]) == {"wt", "tc", "et"}
    case_id = next(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))["case_id"]
    pred = nib.load(tmp_path / "eval" / "predictions" / f"{case_id}_seg.nii.gz")  # the folder's name
    ref = nib.load(real / case_id / "OTMultiClass.nii.gz")
    assert pred.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(pred.affine, ref.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}  # the BraTS 2013 labels


def test_a_config_is_named_by_its_method_and_the_package_ships_them_with_the_console_scripts(tmp_path):
    import subprocess
    import sys
    import zipfile

    from diffseg_jax import command_line

    shipped = ROOT / "configs" / "shaspec.py"
    argv = ["prog", "--config=shaspec:real", "--workdir=W"]
    assert command_line.with_config_file_found(argv) == ["prog", f"--config={shipped}:real", "--workdir=W"]
    relative = ["prog", "--config=configs/shaspec.py"]
    assert command_line.with_config_file_found(relative) == ["prog", f"--config={shipped}"]
    unknown = ["prog", "--config=nosuchmethod"]
    assert command_line.with_config_file_found(unknown) == unknown  # absl then names the missing file
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        tmp_path,
        ROOT,
    ]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    wheel = zipfile.ZipFile(next(tmp_path.glob("diffseg_jax-*.whl")))
    names = set(wheel.namelist())
    assert {"configs/btsegdiff.py", "configs/layouts/brats2013_two_sequences.json"} <= names
    assert {"diffseg_jax/cli.py", "data_pipelines/brats.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert (
        "diffseg-train = diffseg_jax.cli:train" in text and "diffseg-eval = diffseg_jax.cli:evaluate" in text
    )
