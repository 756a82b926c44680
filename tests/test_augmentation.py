"""Training augmentation: the default stays a flip / quarter-turn of the slice, the real-data additions keep
labels binary, the background and missing sequences zero, and every draw is a function of its seed."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import augmentation, input_pipeline

SIZE = 24


def _example() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    brain = np.zeros((SIZE, SIZE), bool)
    brain[4:20, 5:19] = True
    image = np.where(brain[..., None], rng.normal(0, 1, (SIZE, SIZE, 4)), 0).astype(np.float32)
    image[..., 1] = 0  # a missing sequence
    label = np.zeros((SIZE, SIZE, 3), np.float32)
    label[8:16, 9:15, 0] = 1
    label[10:14, 10:13, 1:] = 1
    return image, label


def _run(aug: augmentation.Augmentation, seed: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    tf = input_pipeline._tf()
    image, label = _example()
    out = augmentation.apply(tf, tf.constant(image), tf.constant(label), aug, tf.constant(seed, tf.int64))
    return out[0].numpy(), out[1].numpy()


def _dihedral(x: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(f, k) for f in (x, x[::-1], x[:, ::-1], x[::-1, ::-1]) for k in range(4)]


def test_default_is_a_flip_or_quarter_turn_of_the_slice() -> None:
    image, label = _example()
    seen = set()
    for k in range(12):
        out_image, out_label = _run(augmentation.Augmentation(), (3, k))
        matches = [i for i, v in enumerate(_dihedral(image)) if np.array_equal(v, out_image)]
        assert matches, "not a flip / quarter turn of the input"
        assert np.array_equal(_dihedral(label)[matches[0]], out_label)  # the label moved with the image
        seen.add(matches[0])
    assert len(seen) > 3  # the draws vary with the example


def test_real_data_augmentation_keeps_labels_background_and_missing_sequences() -> None:
    aug = augmentation.Augmentation(
        quarter_turns=False, rotation_degrees=15, scale=0.15, intensity_scale=0.2, intensity_shift=0.2
    )
    image, label = _example()
    for k in range(6):
        out_image, out_label = _run(aug, (0, k))
        assert set(np.unique(out_label)) <= {0.0, 1.0}
        assert abs(out_label[..., 0].sum() - label[..., 0].sum()) <= 0.35 * label[..., 0].sum()
        assert (out_label[..., 1] <= out_label[..., 0]).all()  # the regions stay nested
        assert np.array_equal(out_label[..., 2], out_label[..., 1])  # one transform for every channel
        assert not out_image[..., 1].any()  # the missing sequence stays absent
        outside = np.abs(out_image).sum(-1) == 0
        assert outside[0, 0] and outside.sum() >= (SIZE * SIZE) // 3  # the background stays 0
        assert not np.array_equal(out_image, image)
    a, b = _run(aug, (0, 5)), _run(aug, (0, 5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # a function of the seed


@pytest.mark.parametrize("scale, shift", [(0.3, 0.0), (0.0, 0.5)])
def test_intensity_is_per_sequence_scale_and_shift_inside_the_brain(scale, shift) -> None:
    aug = augmentation.Augmentation(
        flips=False, quarter_turns=False, intensity_scale=scale, intensity_shift=shift
    )
    image, label = _example()
    out_image, out_label = _run(aug, (1, 2))
    assert np.array_equal(out_label, label)
    brain = image[..., 0] != 0
    for c in (0, 2, 3):  # out = image * a + b on the brain, one (a, b) per sequence, within the ranges
        a, b = np.polyfit(image[..., c][brain], out_image[..., c][brain], 1)
        assert abs(a - 1) <= scale + 1e-5 and abs(b) <= shift + 1e-5
        np.testing.assert_allclose(out_image[..., c][brain], a * image[..., c][brain] + b, atol=1e-5)
    assert not out_image[~brain].any()
