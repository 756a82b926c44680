"""Healthy slices of tumour cases: the grid slices that read no source slice near the tumour."""

import numpy as np

from data_pipelines import healthy_slices


def test_healthy_grid_slices_read_only_source_slices_a_margin_away_from_the_tumour():
    brain = np.zeros((6, 6, 100), bool)
    brain[1:5, 1:5, 10:90] = True  # 80 source slices over the brain
    tumour = np.zeros_like(brain)
    tumour[2:4, 2:4, 40:50] = True  # source slices 30-39 of the crop
    margin = 5
    kept = healthy_slices.healthy_grid_slices(tumour, brain, 32, margin)
    n, depth = 80, 32
    for i in range(depth):  # the source slices linear interpolation reads for grid slice i
        centre = (i + 0.5) * n / depth - 0.5
        reads = {int(np.floor(centre)), int(np.floor(centre)) + 1}
        near = any(30 - margin <= r <= 39 + margin for r in reads)
        if i in kept:
            assert not near, i
    assert 0 in kept and depth - 1 in kept  # far from the tumour: healthy
    assert len(kept) < depth - 4  # the tumour's slices and the margin's are out
    no_margin = healthy_slices.healthy_grid_slices(tumour, brain, 32, 0)
    assert set(kept) < set(no_margin)
    assert len(healthy_slices.healthy_grid_slices(np.zeros_like(brain), brain, 32, margin)) == depth
    assert healthy_slices.margin_slices(5.0, np.diag([1.0, 1.0, 2.0, 1.0])) == 3
