"""The numbers an evaluation reports are the right ones: the segmentation evaluation driven by predictors
whose answers are known (the reference, and the reference moved by one voxel), and BTSegDiff's stepwise
uncertainty map followed from the sampler to the file on disk."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from test_brats_reader import write

from configs import btsegdiff
from data_pipelines import brats, slices
from diffseg_jax import inference, metrics, parallel, uncertainty
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.methods.base import unet_kwargs
from diffseg_jax.methods.registry import build_method
from diffseg_jax.models.dual_encoder import DualEncoderNet
from diffseg_jax.tasks import segmentation

SHAPE = (20, 18, 10)
SPACING = (1.0, 1.0, 1.5)  # test_brats_reader.write's zooms
CASE = "Brats18_TEST_1_1"


def _case(root: pathlib.Path) -> brats.CaseFiles:
    """One case on disk: a box of brain, a tumour of oedema (2) around a core (1) around enhancing (4)."""
    folder = root / CASE
    folder.mkdir(parents=True)
    brain = np.zeros(SHAPE, bool)
    brain[2:18, 2:16, 1:9] = True
    rng = np.random.default_rng(0)
    for i, sequence in enumerate(brats.MODALITIES):
        write(
            folder / f"{CASE}_{sequence}.nii.gz",
            np.where(brain, rng.integers(100, 900, SHAPE) + i, 0).astype(np.int16),
        )
    seg = np.zeros(SHAPE, np.uint8)
    seg[5:14, 5:13, 2:8] = 2
    seg[7:12, 7:11, 3:7] = 1
    seg[8:11, 8:10, 4:6] = 4
    write(folder / f"{CASE}_seg.nii.gz", seg)
    (case,) = brats.find_cases(root)
    return case


def _config(out_dir: pathlib.Path):
    config = btsegdiff.get_config("smoke")
    config.eval.output_dir = str(out_dir)
    config.eval.num_overlays = 0
    return config


def _evaluate(tmp_path: pathlib.Path, segment) -> tuple[dict, list[dict], pathlib.Path]:
    case = _case(tmp_path / "data")
    out = tmp_path / "eval"
    summary = segmentation._evaluate_cases(_config(out), [case], segment, 7, out, progress=False)
    return summary, list(csv.DictReader((out / "per_case.csv").open())), out


def _reference_regions(volume: brats.CaseVolume) -> np.ndarray:
    return brats.labels_to_regions(volume.seg, volume.convention).astype(np.float32)


def test_a_predictor_returning_the_reference_scores_perfectly(tmp_path):
    given = {}

    def segment(volume, available, key):
        given["uncertainty"] = np.random.default_rng(1).random((*SHAPE, 3)).astype(np.float32)
        return {"prob": _reference_regions(volume), "uncertainty": given["uncertainty"]}

    summary, rows, out = _evaluate(tmp_path, segment)
    for region in ("wt", "tc", "et"):
        stats = summary["regions"][region]
        assert stats["dice"]["mean"] == 1.0 and stats["hd95"]["mean"] == 0.0 and stats["iou"]["mean"] == 1.0
        assert stats["sensitivity"]["mean"] == stats["specificity"]["mean"] == 1.0
        assert float(rows[0][f"{region}_dice"]) == 1.0 and float(rows[0][f"{region}_hd95"]) == 0.0
    written = np.asarray(nib.load(out / "predictions" / f"{CASE}_seg.nii.gz").dataobj)
    reference = np.asarray(nib.load(tmp_path / "data" / CASE / f"{CASE}_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(written, reference)  # labels 0/1/2/4, the case's own convention
    unc = np.asarray(nib.load(out / "predictions" / f"{CASE}_uncertainty.nii.gz").dataobj)
    np.testing.assert_allclose(unc, given["uncertainty"].max(-1), rtol=1e-6)
    # The QU-BraTS submission: a uint8 map of whole percents per region, and the reported score is the
    # challenge's score of exactly those files (recomputed here from the files by the definition).
    brain = np.asarray(nib.load(tmp_path / "data" / CASE / f"{CASE}_t1.nii.gz").dataobj) > 0
    regions = (("wt", "whole", (1, 2, 4)), ("tc", "core", (1, 4)), ("et", "enhance", (4,)))
    for i, (region, name, labels) in enumerate(regions):
        image = nib.load(out / "predictions" / f"{CASE}_unc_{name}.nii.gz")
        percent = np.asarray(image.dataobj)
        assert image.get_data_dtype() == np.uint8 and percent.max() <= 100
        np.testing.assert_array_equal(percent, np.round(100 * given["uncertainty"][..., i]))
        ref = np.isin(reference, labels)
        expected = metrics.qu_brats(ref, ref, percent.astype(float), brain)["qu_score"]
        assert float(rows[0][f"{region}_qu_score"]) == pytest.approx(expected, abs=1e-6)
    assert not list((out / "predictions").glob("*_prob_*"))  # probabilities only on request


def test_a_predictor_off_by_one_voxel_scores_what_the_metrics_give(tmp_path):
    def segment(volume, available, key):
        return {"prob": np.roll(_reference_regions(volume), 1, axis=0), "uncertainty": np.zeros((*SHAPE, 3))}

    summary, rows, _ = _evaluate(tmp_path, segment)
    seg = np.asarray(nib.load(tmp_path / "data" / CASE / f"{CASE}_seg.nii.gz").dataobj)
    for region, labels in (("wt", (1, 2, 4)), ("tc", (1, 4)), ("et", (4,))):
        ref = np.isin(seg, labels)
        pred = np.roll(ref, 1, axis=0)
        expected_dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())  # counted here, by hand
        got = summary["regions"][region]
        assert got["dice"]["mean"] == pytest.approx(expected_dice, abs=1e-9)
        assert got["hd95"]["mean"] == pytest.approx(metrics.hd95(pred, ref, SPACING), abs=1e-9)
        assert got["hd95"]["mean"] == pytest.approx(1.0)  # a one-voxel move along x (1 mm)
        assert float(rows[0][f"{region}_dice"]) == pytest.approx(expected_dice, abs=1e-5)
    assert summary["regions"]["et"]["dice"]["mean"] == pytest.approx(2 * 2 * 2 * 2 / (2 * 12))


def _randomised(params, scale: float = 0.3):
    """Init plus noise, so that the network's zero-initialised output layers do not make every answer 0.5."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    return jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def test_the_stepwise_uncertainty_on_disk_is_the_samplers_times_e(tmp_path):
    """The written map = e x the stepwise sampler's weighted entropy (so in [0, 1]), on the case's grid."""
    config = _config(tmp_path / "eval")
    method = build_method(config)
    case = _case(tmp_path / "data")
    volume = brats.load_case(case)
    geom, z, inputs = segmentation.case_slices(volume, config.data.image_size)
    assert len(z) <= config.eval.batch_size  # one batch: its key is the case key folded with 0
    params = _randomised(
        method.init(jax.random.PRNGKey(0), {"image": inputs[:1], "label": np.zeros((1, 32, 32, 3))})
    )
    mesh = parallel.make_mesh()
    predict_fn = inference.make_predict_fn(method, mesh)

    def segment(volume, available, key):
        return segmentation.segment_volume(predict_fn, params, volume, config, key, mesh, available=available)

    out = tmp_path / "eval"
    segmentation._evaluate_cases(config, [case], segment, 7, out, progress=False)
    written = np.asarray(nib.load(out / "predictions" / f"{CASE}_uncertainty.nii.gz").dataobj)

    # The sampler called directly, on the same slices and key, with the network wired by hand.
    model = DualEncoderNet(**unet_kwargs(config), fusion="btsegdiff", fourier=True)
    batch = np.zeros((config.eval.batch_size, *inputs.shape[1:]), np.float32)
    batch[: len(z)] = inputs
    cond = model.apply({"params": params}, batch, method=model.encode_condition)

    def denoise(x_t, t):
        steps = jnp.full((batch.shape[0],), t, jnp.int32)
        raw = model.apply({"params": params}, x_t, steps, cond, method=model.denoise)
        return 2.0 * jax.nn.sigmoid(raw) - 1.0  # x0-parameterised: the mask's logits

    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1000), 0), 0)
    s = config.sampling
    sampled = uncertainty.stepwise_uncertainty_sample(
        denoise,
        make_schedule(config.diffusion.schedule, config.diffusion.num_steps),
        config.diffusion.parameterization,
        batch.shape[:3] + (3,),
        key,
        num_samples=s.num_samples,
        method=s.method,
        num_steps=s.num_steps,
    )
    per_slice = math.e * np.asarray(sampled["uncertainty"])[: len(z)]
    expected = slices.from_slices(per_slice, geom, z) * volume.brain[..., None]
    np.testing.assert_allclose(written, expected.max(-1), atol=2e-5)
    assert written.min() >= 0.0 and written.max() <= 1.0 + 1e-6 and written.max() > 0.3
    assert not written[~volume.brain].any()
    summary = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= summary["regions"]["wt"]["qu_score"]["mean"] <= 1.0


def test_case_records_are_reused_only_for_the_same_network_and_checkpoint(tmp_path):
    from diffseg_jax.tasks import case_records

    config = _config(tmp_path)
    calls = []

    def compute(index, name):
        calls.append(name)
        return {"row": {"case_id": name}}

    def run(config, step):
        case_records.CaseRecords(tmp_path, config, step).run(["a", "b"], compute, "evaluating", False)

    run(config, 7)
    run(config, 7)
    assert calls == ["a", "b"]  # the second run read both records
    wider = _config(tmp_path)
    wider.model.base_features = 16  # another network at the same step
    run(wider, 7)
    run(config, 8)  # a newer checkpoint
    deeper = _config(tmp_path)
    deeper.diffusion.parameterization = "eps"
    run(deeper, 8)
    assert calls == ["a", "b"] * 4
