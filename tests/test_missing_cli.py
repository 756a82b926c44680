"""Missing sequences end to end on the smoke presets: synthesis, segmentation from subsets, fill-in."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import optax
import pytest

from configs import btsegdiff, m2dn, shaspec, synthesis_unet
from data_pipelines.brats import DataError
from diffseg_jax import modalities, parallel
from diffseg_jax.methods.base import Method
from diffseg_jax.modalities import MODALITIES, all_subsets
from diffseg_jax.tasks import segmentation, synthesis
from diffseg_jax.tasks.fill_in import make_fill_in
from diffseg_jax.train import train_and_evaluate, train_step
from diffseg_jax.train_state import TrainState

SEGMENTER = "--config=configs/btsegdiff.py:smoke"


@pytest.fixture(scope="module")
def m2dn_run(trained_run):
    return trained_run("m2dn-smoke", "--config=configs/m2dn.py:smoke")


@pytest.fixture(scope="module")
def segmenter_run(trained_run):
    """A segmenter trained on all four sequences: the suite's shared BTSegDiff smoke run."""
    return btsegdiff.get_config("smoke"), trained_run("btsegdiff-smoke", SEGMENTER)


def test_m2dn_synthesises_every_pattern_through_the_clis(m2dn_run, cli, tmp_path):
    result = cli(
        "run_eval.py",
        "--config=configs/m2dn.py:smoke",
        f"--workdir={m2dn_run}",
        f"--config.eval.output_dir={tmp_path}",
    )
    assert all(f"{seq}: PSNR" in result.stdout for seq in MODALITIES)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["task"] == "synthesis" and len(summary["patterns"]) == 14
    for seq in MODALITIES:  # each sequence is missing in 7 of the 14 patterns
        assert sum(seq in by_seq for by_seq in summary["patterns"].values()) == 7
        assert math.isfinite(summary["per_sequence"][seq]["psnr"]["mean"])
        assert math.isfinite(summary["baseline_mean"]["per_sequence"][seq]["psnr"]["mean"])
    written = sorted((tmp_path / "synthesis").glob("*.nii.gz"))
    assert len(written) == 4  # one case (num_overlays = 1) x the four single-missing patterns
    assert len(nib.load(written[0]).shape) == 3


def test_regressor_baseline_trains_and_evaluates(tmp_path):
    config = synthesis_unet.get_config("smoke")
    assert config.method == "synthesis_unet" and config.task == "synthesis"
    config.train.steps, config.train.eval_every = 2, 0  # runs end to end; learning is test_m2dn's
    config.eval.max_cases = 1
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


def test_each_subset_evaluated_once_with_the_fill_in_route(m2dn_run, segmenter_run, cli, tmp_path):
    _, workdir = segmenter_run
    out_dir = tmp_path / "subsets_eval"
    result = cli(
        "run_eval.py",
        SEGMENTER,
        f"--workdir={workdir}",
        "--config.eval.available=each",
        "--config.eval.max_cases=1",
        "--config.sampling.num_samples=1",
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


def test_fill_in_must_be_a_synthesis_model(segmenter_run):
    config, workdir = segmenter_run
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
    config.train.steps, config.train.eval_every = 2, 0  # runs end to end; learning is test_shaspec's
    config.eval.max_cases = 1
    train_and_evaluate(config, tmp_path, progress=False)
    config.eval.available = "flair"
    summary = segmentation.evaluate(config, tmp_path, progress=False)
    assert summary["available"] == "flair" and summary["num_cases"] >= 1
    assert all(0.0 <= summary["regions"][r]["dice"]["mean"] <= 1.0 for r in ("wt", "tc", "et"))


def test_m2dn_config_is_the_regressor_s_but_for_the_method():
    a, b = m2dn.get_config("smoke"), synthesis_unet.get_config("smoke")
    assert a.model == b.model and a.data == b.data and a.train == b.train and b.method != a.method


def test_training_with_sequence_dropout_shows_the_loss_a_nonempty_proper_subset():
    """train.sequence_dropout = 1: each example the loss sees lacks one to three sequences, never all four."""

    def loss(params, batch, key):
        present = modalities.available_from_image(batch["image"]).sum(axis=-1)
        return jnp.sum(params["w"]) * 0.0, {"fewest": present.min(), "most": present.max()}

    method = Method("recording", lambda key, batch: {"w": jnp.zeros(())}, loss, None)
    tx = optax.sgd(0.1)
    params = {"w": jnp.zeros(())}
    state = TrainState(jnp.zeros((), jnp.int32), params, params, tx.init(params), jax.random.PRNGKey(0), tx)
    images = jnp.ones((64, 4, 4, 4))
    batch = {"image": images, "label": jnp.zeros((64, 4, 4, 3))}
    for rate, fewest, most in ((1.0, 1, 3), (0.0, 4, 4)):
        _, metrics = train_step(state, batch, method, ema_max_decay=0.9, sequence_dropout=rate)
        assert (int(metrics["fewest"]), int(metrics["most"])) == (fewest, most), rate


def test_evaluation_shows_the_segmenter_only_the_available_sequences(tmp_path, monkeypatch):
    """eval.available (one subset, and 'each') zeroes exactly the other sequences of every slice batch."""
    config = btsegdiff.get_config("smoke")
    config.eval.max_cases = 1
    config.eval.output_dir = str(tmp_path)
    config.eval.write_predictions = False
    seen: list[np.ndarray] = []

    def recording_predict(params, images, key):
        seen.append(np.asarray(images))
        shape = images.shape[:3] + (3,)
        return {"prob": np.zeros(shape, np.float32), "uncertainty": np.zeros(shape, np.float32)}

    monkeypatch.setattr(segmentation.inference, "make_predict_fn", lambda method, mesh: recording_predict)
    monkeypatch.setattr(segmentation, "restore_params", lambda *args: ({}, 1))

    def channels_shown() -> set[str]:
        batches = np.concatenate(seen)
        seen.clear()
        return {m for k, m in enumerate(MODALITIES) if np.any(batches[..., k] != 0)}

    config.eval.available = "t1ce,flair"
    assert segmentation.evaluate(config, tmp_path, progress=False)["available"] == "t1ce,flair"
    assert channels_shown() == {"t1ce", "flair"}
    config.eval.available = ""
    segmentation.evaluate(config, tmp_path, progress=False)
    assert channels_shown() == set(MODALITIES)

    shown_per_subset = []
    real_evaluate_cases = segmentation._evaluate_cases

    def evaluate_cases(sub_config, *args):
        summary = real_evaluate_cases(sub_config, *args)
        shown_per_subset.append((sub_config.eval.available, channels_shown()))
        return summary

    monkeypatch.setattr(segmentation, "_evaluate_cases", evaluate_cases)
    config.eval.available = "each"
    segmentation.evaluate(config, tmp_path / "each", progress=False)
    assert [(name, set(name.split(","))) for name, _ in shown_per_subset] == shown_per_subset
    assert len(shown_per_subset) == 15
