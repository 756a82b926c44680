"""Dice versus the number of sampling steps K of a trained model (picks the default K).

    python bench/dice_vs_steps.py --workdir=runs/compare/btsegdiff --out=runs/dice_vs_steps

Volume level on the test split: run_eval's full evaluation with DDIM-K, S chains, stepwise uncertainty,
for every K (WT/TC/ET Dice, seconds per case). The full DDPM chain (T = 1000) is too slow for whole
volumes on a CPU, so it is compared on a subset: the first `--ddpm_slices` tumour slices of the test
split, slice-pooled Dice, against DDIM-K on the same slices with the same key. Rerunnable: finished
evaluations are read back. Writes results.jsonl, dice_vs_steps.md and dice_vs_steps.png into --out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffseg_jax import runtime  # noqa: E402

PUBLIC_CODE_EVALUATIONS = 1000 * 5  # MedSegDiff's public sampler: 1000 DDPM steps x 5 samples


def _config(args, **sampling):
    config = importlib.import_module(f"configs.{args.method}").get_config(args.preset)
    config.sampling.num_samples = args.samples
    if args.phantom_version:
        config.data.phantom_version = args.phantom_version
    for key, value in sampling.items():
        config.sampling[key] = value
    return config


def volume_level(args, out: pathlib.Path, k: int) -> dict:
    from diffseg_jax.tasks.segmentation import evaluate

    target = out / f"ddim_{k}"
    if (target / "metrics.json").exists():
        summary = json.loads((target / "metrics.json").read_text())
    else:
        config = _config(args, method="ddim", num_steps=k)
        config.eval.output_dir = str(target)
        config.eval.write_predictions = False
        config.eval.num_overlays = 0
        config.eval.max_cases = args.cases
        summary = evaluate(config, args.workdir, progress=False)
    record = {"level": "volume", "sampler": "ddim", "K": k, "S": args.samples, "cases": summary["num_cases"]}
    record["network_evaluations_per_slice"] = k * args.samples
    record["seconds_per_case"] = round(summary["seconds_per_case"], 2)
    for region, stats in summary["regions"].items():
        record[f"{region}_dice"] = round(stats["dice"]["mean"], 4)
    return record


def slice_level(args, samplers: list[tuple[str, int]]) -> list[dict]:
    """Slice-pooled Dice of each (sampler, K) on the same tumour slices of the test split."""
    import jax
    import numpy as np

    from data_pipelines import sources
    from diffseg_jax import inference, parallel
    from diffseg_jax.checkpoint import restore_params
    from diffseg_jax.methods.registry import build_method

    base = _config(args)
    mesh = parallel.make_mesh()
    test = sources.slice_arrays(
        base, sources.load_splits(base, progress=False)["test"], base.seed, progress=False
    )
    tumour = np.flatnonzero(test["label"][..., 0].any(axis=(1, 2)))[: args.ddpm_slices]
    images, labels = test["image"][tumour], test["label"][tumour] > 0.5
    records = []
    for sampler, k in samplers:
        config = _config(args, method=sampler, num_steps=k)
        method = build_method(config)
        example = sources.example_slices(config)
        params, _ = restore_params(config, pathlib.Path(args.workdir), method, mesh, example)
        predict_fn = inference.make_predict_fn(method, mesh)
        tic = time.perf_counter()
        out = inference.predict_slices(
            predict_fn,
            params,
            images,
            jax.random.PRNGKey(7),
            mesh,
            progress=True,
            **inference.eval_batching(config),
        )
        seconds = time.perf_counter() - tic
        pred = out["prob"] > 0.5
        inter = (pred & labels).sum(axis=(0, 1, 2))
        dice = 2 * inter / np.maximum(pred.sum(axis=(0, 1, 2)) + labels.sum(axis=(0, 1, 2)), 1)
        steps = 1000 if sampler == "ddpm" else k
        record = {"level": "slices", "sampler": sampler, "K": steps, "S": args.samples, "slices": len(tumour)}
        record["network_evaluations_per_slice"] = steps * args.samples
        record["seconds_per_slice_with_compile"] = round(seconds / len(tumour), 3)
        present = labels.any(axis=(0, 1, 2))  # a region absent from every chosen slice has no Dice
        for region, value, has in zip(("wt", "tc", "et"), dice, present, strict=False):
            record[f"{region}_dice"] = round(float(value), 4) if has else None
        records.append(record)
    return records


def write_report(out: pathlib.Path, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "| level | sampler | K | S | network evals / slice (public code: 5000) | WT | TC | ET | s/case |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['level']} | {r['sampler']} | {r['K']} | {r['S']} | {r['network_evaluations_per_slice']} "
            f"| {r.get('wt_dice', '')} | {r.get('tc_dice', '')} | {r.get('et_dice', '')} "
            f"| {r.get('seconds_per_case', '')} |"
        )
    (out / "dice_vs_steps.md").write_text("\n".join(lines) + "\n")
    volume = [r for r in records if r["level"] == "volume"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for region in ("wt", "tc", "et"):
        ax.plot([r["K"] for r in volume], [r[f"{region}_dice"] for r in volume], "o-", label=region.upper())
    ax.set_xscale("log")
    ax.set_xlabel("DDIM steps K")
    ax.set_ylabel("Dice (test cases, volume level)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "dice_vs_steps.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs/compare/btsegdiff")
    parser.add_argument("--method", default="btsegdiff")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--out", default="runs/dice_vs_steps")
    parser.add_argument("--ks", default="5,10,20,50,100")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--cases", type=int, default=0, help="test cases (0 = the whole split)")
    parser.add_argument("--ddpm_slices", type=int, default=16, help="0 skips the DDPM comparison")
    parser.add_argument("--phantom_version", type=int, default=0, help="the model's phantom (0 = default)")
    args = parser.parse_args()

    runtime.configure()
    runtime.enable_compilation_cache()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    records = []
    for k in ks:
        records.append(volume_level(args, out, k))
        print(json.dumps(records[-1]), flush=True)
    if args.ddpm_slices:
        for record in slice_level(args, [("ddim", k) for k in ks] + [("ddpm", 0)]):
            records.append(record)
            print(json.dumps(record), flush=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(out, records)


if __name__ == "__main__":
    main()
