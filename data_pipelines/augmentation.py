"""On-the-fly augmentation of training slices, stateless (every draw seeded by [seed, example]).

Two families, as real-data training needs them (nnU-Net's recipe, in 2D):

* geometry, identical for image and label: flips, 90-degree turns, and a small rotation and scaling about
  the slice centre (bilinear; labels thresholded at 0.5 after, so they stay {0, 1});
* intensity, per sequence: a scale ``1 + U(-s, s)`` and a shift ``U(-d, d)`` (z-score units) applied to
  the brain only, so the background stays 0 and a missing sequence stays an all-zero channel.

The default (flips and quarter turns only) draws exactly what it always drew, so runs that do not ask
for the others are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What `apply` does to each training example; all off = the identity."""

    flips: bool = True
    quarter_turns: bool = True
    rotation_degrees: float = 0.0  # rotation ~ U(-r, r) degrees
    scale: float = 0.0  # zoom ~ 1 + U(-s, s)
    intensity_scale: float = 0.0  # per sequence, x (1 + U(-s, s))
    intensity_shift: float = 0.0  # per sequence, + U(-d, d) inside the brain

    @property
    def affine(self) -> bool:
        return self.rotation_degrees > 0 or self.scale > 0

    @property
    def intensity(self) -> bool:
        return self.intensity_scale > 0 or self.intensity_shift > 0

    @property
    def active(self) -> bool:
        return self.flips or self.quarter_turns or self.affine or self.intensity


def from_config(data: ml_collections.ConfigDict) -> Augmentation:
    """The augmentation `data` asks for (`data.augment` off: none at all)."""
    if not data.get("augment", True):
        return Augmentation(flips=False, quarter_turns=False)
    return Augmentation(
        flips=True,
        quarter_turns=bool(data.get("augment_quarter_turns", True)),
        rotation_degrees=float(data.get("augment_rotation_degrees", 0.0)),
        scale=float(data.get("augment_scale", 0.0)),
        intensity_scale=float(data.get("augment_intensity_scale", 0.0)),
        intensity_shift=float(data.get("augment_intensity_shift", 0.0)),
    )


def _affine(tf: Any, image: Any, label: Any, aug: Augmentation, seed: Any) -> tuple[Any, Any]:
    """Rotation and scaling about the centre: output pixel (x, y) reads input R(theta) / zoom (p - c) + c."""
    draws = tf.random.stateless_uniform([2], seed=seed, minval=-1.0, maxval=1.0)
    theta = draws[0] * (aug.rotation_degrees * math.pi / 180.0)
    zoom = 1.0 + draws[1] * aug.scale
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    a0, a1 = tf.cos(theta) / zoom, -tf.sin(theta) / zoom
    b0, b1 = tf.sin(theta) / zoom, tf.cos(theta) / zoom
    transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])

    def warp(x: Any) -> Any:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None],
            transforms=transform[None],
            output_shape=tf.stack([height, width]),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )[0]

    return warp(image), tf.cast(warp(label) >= 0.5, label.dtype)


def _intensity(tf: Any, image: Any, aug: Augmentation, seed: Any) -> Any:
    channels = tf.shape(image)[-1]
    draws = tf.random.stateless_uniform(tf.stack([2, channels]), seed=seed, minval=-1.0, maxval=1.0)
    scale = 1.0 + draws[0] * aug.intensity_scale
    shift = draws[1] * aug.intensity_shift
    inside = tf.cast(image != 0, image.dtype)  # the brain of each present sequence
    return image * scale + shift * inside


def apply(tf: Any, image: Any, label: Any, aug: Augmentation, seed: Any) -> tuple[Any, Any]:
    """One example's augmentation; ``seed`` is a stateless [2] seed (e.g. [run seed, example index])."""
    draws = tf.random.stateless_uniform([3], seed=seed, minval=0, maxval=4, dtype=tf.int32)
    flip_h, flip_v = draws[0] >= 2, draws[1] >= 2
    quarter_turns = draws[2] if aug.quarter_turns else 0

    def transform(x: Any) -> Any:
        if aug.flips:
            x = tf.cond(flip_h, lambda: tf.reverse(x, axis=[1]), lambda: x)
            x = tf.cond(flip_v, lambda: tf.reverse(x, axis=[0]), lambda: x)
        return tf.image.rot90(x, k=quarter_turns) if aug.quarter_turns else x

    image, label = transform(image), transform(label)
    if aug.affine:
        image, label = _affine(tf, image, label, aug, tf.random.experimental.stateless_fold_in(seed, 1))
    if aug.intensity:
        image = _intensity(tf, image, aug, tf.random.experimental.stateless_fold_in(seed, 2))
    return image, label
