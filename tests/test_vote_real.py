"""bench/vote_real.py: the vote keeps a region where more than half of the methods put it, nested again."""

from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import vote_real  # noqa: E402


def test_each_region_is_the_majority_of_the_methods_and_the_labels_stay_nested():
    # voxels: background, oedema, necrotic core, enhancing; three methods disagree on the last three
    a = np.array([0, 2, 1, 4], np.uint8)
    b = np.array([0, 2, 2, 4], np.uint8)
    c = np.array([2, 0, 1, 1], np.uint8)
    voted = vote_real.vote([a, b, c], "brats2021")
    # WT: 1/3, 2/3, 3/3, 3/3 -> no, yes, yes, yes; TC: 0, 0, 2/3, 3/3; ET: 0, 0, 0, 2/3
    np.testing.assert_array_equal(voted, [0, 2, 1, 4])
    two = vote_real.vote([a, c], "brats2021")  # a tie is not more than half
    np.testing.assert_array_equal(two, [0, 0, 1, 1])
    d = np.array([0, 2, 1, 3], np.uint8)  # BraTS 2023: enhancing is label 3
    np.testing.assert_array_equal(vote_real.vote([d, d, a], "brats2023"), d)
