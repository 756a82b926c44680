"""Stepwise uncertainty over the full 1000-step chain: every estimate fused, or only the chain's last k.

    python bench/stepwise_last.py --workdir=runs/real_brats/btsegdiff/fold0 --preset=real \
        --root=/path/to/brats2018-twelve --fold=0 --out=runs/stepwise_last

Over T = 1000 DDPM steps the stepwise weights exp(sigmoid(t / T)) * (1 - U_t) barely favour the late
estimates (last / first 1.26), so the early, noisy ones count nearly as much; the public BTSegDiff code fuses
the end of its chain (`sampling.stepwise_last`). This script samples the same S chains (same key) once per
k and scores each fusion on `--slices` tumour slices evenly spread over the test split of the fold: Dice,
QU-BraTS score, UEO and ECE per region, pooled over the slices (the slices stacked as one volume; the brain
is where any sequence is non-zero). Writes results.jsonl and stepwise_last.md into --out; a k already in
results.jsonl is read back.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffseg_jax import metrics, runtime  # noqa: E402

REGIONS = ("wt", "tc", "et")


def fold_config(args: argparse.Namespace, last: int, ddim_steps: int = 0):
    """The run's config sampling the full DDPM chain (or, with `ddim_steps`, DDIM with that many steps)."""
    config = importlib.import_module(f"configs.{args.method}").get_config(args.preset)
    if args.root:
        config.data.root = args.root
        config.data.folds, config.data.fold = args.folds, args.fold
    config.sampling.update(method="ddpm", num_samples=args.samples, stepwise_last=last)
    if ddim_steps:
        config.sampling.update(method="ddim", num_steps=ddim_steps)
    return config


def test_slices(config, count: int) -> dict[str, np.ndarray]:
    """`count` tumour slices evenly spread over the test split (so every test case contributes)."""
    from data_pipelines import sources

    test = sources.slice_arrays(
        config, sources.load_splits(config, progress=False)["test"], config.seed, progress=False
    )
    tumour = np.flatnonzero(test["label"][..., 0].any(axis=(1, 2)))
    if tumour.size == 0:
        raise SystemExit("the test split has no tumour slice to score")
    chosen = tumour[np.linspace(0, len(tumour) - 1, min(count, len(tumour))).round().astype(int)]
    return {"image": test["image"][chosen], "label": test["label"][chosen] > 0.5}


def fused_scores(
    args: argparse.Namespace, last: int, slices: dict[str, np.ndarray], ddim_steps: int = 0
) -> dict:
    import jax

    from data_pipelines import sources
    from diffseg_jax import inference, parallel
    from diffseg_jax.checkpoint import restore_params
    from diffseg_jax.methods.registry import build_method

    config = fold_config(args, last, ddim_steps)
    mesh = parallel.make_mesh()
    method = build_method(config)
    params, _ = restore_params(
        config, pathlib.Path(args.workdir), method, mesh, sources.example_slices(config)
    )
    predict_fn = inference.make_predict_fn(method, mesh)
    tic = time.perf_counter()
    out = inference.predict_slices(
        predict_fn, params, slices["image"], jax.random.PRNGKey(7), mesh, batch_size=args.batch, progress=True
    )
    record = {
        "last": last or "all",
        "T": ddim_steps or config.diffusion.num_steps,
        "sampler": "ddim" if ddim_steps else "ddpm",
        "S": args.samples,
        "slices": len(slices["image"]),
    }
    record["seconds"] = round(time.perf_counter() - tic, 1)
    brain = slices["image"].any(axis=-1)
    for i, region in enumerate(REGIONS):
        prob, ref = out["prob"][..., i], slices["label"][..., i]
        if not ref.any():
            continue
        scores = metrics.uncertainty_scores(prob, prob > 0.5, ref, 100.0 * out["uncertainty"][..., i], brain)
        record[f"{region}_dice"] = round(metrics.dice(prob > 0.5, ref), 4)
        for name in ("qu_score", "ueo", "ece"):
            record[f"{region}_{name}"] = round(float(scores[name]), 4)
    return record


def table(records: list[dict]) -> str:
    names = [("dice", "Dice"), ("qu_score", "QU-BraTS"), ("ueo", "UEO"), ("ece", "ECE")]
    header = ["sampler, fused estimates", "s"] + [
        f"{r.upper()} {label}" for label in dict(names).values() for r in REGIONS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        fused = f"last {r['last']}" if r["last"] != "all" else "all"
        cells = [f"{r.get('sampler', 'ddpm').upper()} {r['T']}, {fused}", str(r["seconds"])]
        cells += [str(r.get(f"{region}_{name}", "–")) for name, _ in names for region in REGIONS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--workdir", required=True, help="a trained BTSegDiff run")
    parser.add_argument("--method", default="btsegdiff")
    parser.add_argument("--preset", default="real")
    parser.add_argument("--root", default="", help="the labelled cases the run was trained on ('' = phantom)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", default="runs/stepwise_last")
    parser.add_argument("--lasts", default="0,100,10", help="k values; 0 = every estimate")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument(
        "--ddim", type=int, default=0, help="> 0: also DDIM with this many steps, every estimate"
    )
    args = parser.parse_args()

    runtime.configure()
    runtime.enable_compilation_cache()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r.get("sampler", "ddpm"), r["T"], r["last"]) for r in records}
    slices = test_slices(fold_config(args, 0), args.slices)
    runs = [(int(k), 0) for k in args.lasts.split(",")] + ([(0, args.ddim)] if args.ddim else [])
    for last, ddim_steps in runs:
        key = ("ddim", ddim_steps, "all") if ddim_steps else ("ddpm", 1000, last or "all")
        if key in done:
            continue
        records.append(fused_scores(args, last, slices, ddim_steps))
        print(json.dumps(records[-1]), flush=True)
        results.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = table(records)
    (out / "stepwise_last.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
