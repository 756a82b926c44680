"""The input pipeline at the paper size (256 px): is it fast enough for an accelerator, and what does
preparing a whole BraTS 2021 training folder (1,251 cases) cost?

    python bench/pipeline_scale.py --cases=8 --out=runs/pipeline/pipeline.jsonl

Generates `--cases` phantom cases at 1 mm (the MNI grid, 197 x 233 x 189 voxels; BraTS is 240 x 240 x 155),
times `input_pipeline.build_arrays` on them with the `paper` preset's slicing (axial slices 80-120 at 256 px,
the four sequences and WT/TC/ET) and the size of its cached .npz, then extrapolates both to 1,251 cases. Then
the tf.data train batches at 256 px (batch 8, augmentation on): examples/s, against the examples/s one
accelerator's train step would consume = batch x achieved FLOP/s / FLOPs per step, with the FLOPs from XLA's
cost analysis of each method's paper train step and the achieved FLOP/s an assumption (`--accelerator_tflops`,
default 100: ~30-50% of an A100's or H100's dense bf16 peak). One JSON object per line, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BRATS_2021_TRAINING_CASES = 1251


def prepare(args, root: pathlib.Path) -> dict:
    """Seconds and disk bytes of slicing `args.cases` cases at the paper settings, per case and x 1,251."""
    from configs import btsegdiff
    from data_pipelines import input_pipeline, sources

    config = btsegdiff.get_config("paper")
    config.data.root = str(root)
    cases = sources.checked_cases(config, progress=False)
    with tempfile.TemporaryDirectory() as cache:
        tic = time.perf_counter()
        arrays = input_pipeline.build_arrays(
            cases,
            image_size=config.data.image_size,
            target=config.data.target,
            slice_range=sources.slice_range(config),
            healthy_fraction=config.data.healthy_fraction,
            seed=0,
            cache_dir=pathlib.Path(cache),
            progress=True,
        )
        seconds = time.perf_counter() - tic
        disk = sum(f.stat().st_size for f in pathlib.Path(cache).rglob("*") if f.is_file())
    per_case_s, per_case_mb = seconds / len(cases), disk / len(cases) / 2**20
    return {
        "bench": "prepare",
        "cases": len(cases),
        "image_size": config.data.image_size,
        "slices": int(arrays["image"].shape[0]),
        "seconds_per_case": round(per_case_s, 2),
        "mb_per_case": round(per_case_mb, 1),
        "brats2021_hours": round(per_case_s * BRATS_2021_TRAINING_CASES / 3600, 2),
        "brats2021_gb": round(per_case_mb * BRATS_2021_TRAINING_CASES / 1024, 1),
        "arrays": arrays,
    }


def throughput(arrays: dict, batch_size: int, batches: int, augment=True) -> dict:
    """tf.data examples/s of `train_batches` (`augment` as it takes it): median of three rounds after a
    warm-up."""
    import numpy as np

    from data_pipelines import input_pipeline

    stream = input_pipeline.train_batches(arrays, global_batch_size=batch_size, seed=0, augment=augment)
    for _ in range(3):
        next(stream)
    rates = []
    for _ in range(3):
        tic = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batches * batch_size / (time.perf_counter() - tic))
    rate = round(float(np.median(rates)), 1)
    return {"bench": "pipeline", "batch_size": batch_size, "examples_per_second": rate}


def step_flops(method: str) -> float:
    """FLOPs of one paper-preset train step (XLA's cost analysis; compiled, not run)."""
    import jax
    import speed

    from diffseg_jax import parallel, train
    from diffseg_jax.methods.registry import build_method
    from diffseg_jax.train_state import create_train_state

    config = speed._config(method, "paper")
    method_obj = build_method(config)
    batch = speed._random_batch(config, config.train.batch_size)
    mesh = parallel.make_mesh()
    example = {k: v[:1] for k, v in batch.items()}
    state = jax.eval_shape(lambda: create_train_state(config, method_obj, example))
    compiled = train.make_train_step(method_obj, config, mesh).lower(state, batch).compile()
    return speed._flops(compiled)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--methods", default="btsegdiff,unet_baseline")
    parser.add_argument("--accelerator_tflops", type=float, default=100.0)
    parser.add_argument("--data_dir", default="", help="where the 1-mm cases go (default: a temp dir)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from diffseg_jax import runtime

    runtime.configure()
    sys.path.insert(0, str(ROOT / "bench"))
    from data_pipelines import phantom

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        root = phantom.ensure_dataset(args.data_dir or tmp, num_cases=args.cases, seed=0, spacing_mm=1.0)
        generate = {"bench": "generate", "cases": args.cases, "seconds": round(time.perf_counter() - tic, 1)}
        records.append(generate)
        prepared = prepare(args, root)
    arrays = prepared.pop("arrays")
    records.append(prepared)
    fed = throughput(arrays, 8, args.batches)
    records.append(fed)
    for method in args.methods.split(","):
        flops = step_flops(method)
        consumed = 8 * args.accelerator_tflops * 1e12 / flops
        records.append(
            {
                "bench": "accelerator_demand",
                "method": method,
                "gflop_per_step": round(flops / 1e9, 1),
                "assumed_tflops": args.accelerator_tflops,
                "examples_per_second_consumed": round(consumed, 1),
                "pipeline_headroom": round(fed["examples_per_second"] / consumed, 2),
            }
        )
    lines = [json.dumps(record) for record in records]
    print("\n".join(lines), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
