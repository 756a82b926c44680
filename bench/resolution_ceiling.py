"""The Dice a perfect slice-wise segmenter could score at a given image size: the resolution's ceiling.

    python bench/resolution_ceiling.py --root=/path/to/brats2018-twelve --sizes=64,128,192

Every segmenter sees each axial slice as the brain's crop resized to `data.image_size` pixels and writes its
probabilities back to the case's grid. Here the reference itself takes that round trip (region masks to the
model's slices as training sees them, thresholded at 0.5; back to the grid as evaluation writes predictions,
thresholded at 0.5; encoded in the case's labels), and the result is scored against the reference with the
evaluation's metrics. What is lost is lost to the pixel size alone: no model at that size can score more.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipelines import brats, slices  # noqa: E402
from diffseg_jax.tasks import segmentation  # noqa: E402

REAL = ROOT.parent / "shared" / "real" / "brats2018-twelve"
REGIONS = ("wt", "tc", "et")


def round_trip_labels(volume: brats.CaseVolume, image_size: int) -> np.ndarray:
    """The reference's labels after the model's slicing at `image_size` and the prediction writer's return."""
    geom = slices.slice_geometry(volume.brain, image_size)
    z = np.flatnonzero(volume.brain.any(axis=(0, 1)))
    regions = brats.labels_to_regions(volume.seg, volume.convention).astype(np.float32)
    on_model_grid = slices.to_slices(regions, geom, z, is_label=True)
    back = slices.from_slices(on_model_grid, geom, z)
    return segmentation.prediction_to_labels(back, volume.convention, "regions")


def ceiling(root: str, sizes: list[int]) -> dict[int, dict[str, list[float]]]:
    """Per image size, per region: the round trip's Dice of every labelled case under `root`."""
    dice = {s: {r: [] for r in REGIONS} for s in sizes}
    for case in brats.find_cases(root, require_seg=True):
        volume = brats.load_case(case)
        for s in sizes:
            scores = segmentation.case_metrics(round_trip_labels(volume, s), volume, "regions")
            for r in REGIONS:
                dice[s][r].append(scores[r]["dice"])
        print(case.case_id, {s: [round(dice[s][r][-1], 3) for r in REGIONS] for s in sizes}, flush=True)
    return dice


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=str(REAL), help="labelled BraTS cases, any release's naming")
    parser.add_argument("--sizes", default="64,128", help="comma-separated data.image_size values")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        dice = ceiling(args.root, sizes)
    except brats.DataError as err:  # one line naming the file, not a traceback
        raise SystemExit(str(err)) from None
    lines = ["| image size | WT Dice | TC Dice | ET Dice | ET, lowest case |", "|---|---|---|---|---|"]
    for s in sizes:
        cells = [f"{np.mean(dice[s][r]):.3f} ± {np.std(dice[s][r]):.3f}" for r in REGIONS]
        lines.append(f"| {s} px | " + " | ".join(cells) + f" | {min(dice[s]['et']):.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
