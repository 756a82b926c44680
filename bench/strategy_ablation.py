"""BTSegDiff's training strategies, alone and combined, against the U-Net over seeds: a Markdown table.

    python bench/strategy_ablation.py --out=runs/strategies                       # every variant, seed 0
    python bench/strategy_ablation.py --variants=unet,default --seeds=0,1,2      # the 3-seed comparison
    python bench/strategy_ablation.py --out=/tmp/s --preset=smoke --variants=unet,self_condition
    python bench/strategy_ablation.py --variants=unet,default --seeds=0,1,2 --test_phantom_cases=36

Each (variant, seed) runs through run_train.py and run_eval.py with `--config.seed=<seed>` into
<out>/<variant>/seed<seed>; finished runs are reused. Per variant: validation Dice of the kept checkpoint
(mean of WT/TC/ET on the validation slices, the score that picks it) and test-split Dice per region, each
as the mean ± sample sd over the seeds (the sd needs two seeds or more), and the median train step.

`--test_phantom_cases=N` tests on N further phantom cases instead of the 9 of the test split: a second draw
of the generator (`--test_phantom_seed`, default 1; new lesions, tumour-free cases and mimics on the same
anatomy, none seen in training), evaluated into <workdir>/eval_phantom-n<N>-s<seed>. Nine cases are too few
to separate two methods whose Dice differ by a few hundredths; `--paired` adds each variant minus the first,
case by case, with a bootstrap interval over the cases.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
from finished import trained  # bench/ is the script's folder, on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipelines import phantom  # noqa: E402

REGIONS = ("wt", "tc", "et")
# variant -> (method config, overrides of its training and evaluation)
VARIANTS = {
    "unet": ("unet_baseline", []),
    "default": ("btsegdiff", []),
    "self_condition": ("btsegdiff", ["--config.diffusion.self_condition=True"]),
    "recycle_xt": ("btsegdiff", ["--config.diffusion.recycling=xt"]),
    "recycle_xT": ("btsegdiff", ["--config.diffusion.recycling=xT"]),
    "condition_head": ("btsegdiff", ["--config.loss.condition_head_weight=1.0"]),
    "condition_head_deepest": (
        "btsegdiff",
        ["--config.loss.condition_head_weight=0.5", "--config.loss.condition_head_levels=1"],
    ),
    "learning_rate_2x": ("btsegdiff", ["--config.train.learning_rate=6e-4"]),
    "unet_learning_rate_2x": ("unet_baseline", ["--config.train.learning_rate=6e-4"]),
    "importance": (
        "btsegdiff",
        ["--config.diffusion.importance_sampling=True", "--config.diffusion.timestep_power=1"],
    ),
}


def run(
    variant: str, seed: int, out: pathlib.Path, preset: str, extra: list[str], test: TestSet
) -> pathlib.Path:
    method, overrides = VARIANTS[variant]
    workdir = out / variant / f"seed{seed}"
    config = f"--config=configs/{method}.py" + (f":{preset}" if preset else "")
    args = [config, f"--workdir={workdir}", f"--config.seed={seed}", *overrides, *extra]
    eval_args = [*args, *test.eval_flags(workdir)]
    for script, script_args, done in (
        ("run_train.py", args, trained),
        ("run_eval.py", eval_args, lambda w: (test.eval_dir(w) / "metrics.json").exists()),
    ):
        if not done(workdir):
            cmd = [sys.executable, str(ROOT / script), *script_args]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
    return workdir


@dataclasses.dataclass(frozen=True)
class TestSet:
    """Where a run is tested: the phantom's test split, or N cases of a further phantom draw."""

    phantom_cases: int = 0  # 0: the test split of the training data
    phantom_seed: int = 1

    @property
    def name(self) -> str:
        return f"eval_phantom-n{self.phantom_cases}-s{self.phantom_seed}" if self.phantom_cases else "eval"

    def eval_dir(self, workdir: pathlib.Path) -> pathlib.Path:
        return workdir / self.name

    def tumour_free(self, case: str) -> bool:
        """Whether a phantom case (BraTS2021_<index>) was drawn without a lesion (its Dice is 1 or 0)."""
        return phantom.tumour_free(
            int(case.rsplit("_", 1)[1]), self.phantom_seed if self.phantom_cases else 0
        )

    def eval_flags(self, workdir: pathlib.Path) -> list[str]:
        if not self.phantom_cases:
            return []
        root = phantom.ensure_dataset(num_cases=self.phantom_cases, seed=self.phantom_seed)
        return [f"--config.eval.data_root={root}", f"--config.eval.output_dir={self.eval_dir(workdir)}"]


def validation_dice(workdir: pathlib.Path) -> float:
    """The selection score stored with the kept checkpoint (<workdir>/best/<step>/metrics)."""
    kept = sorted((workdir / "best").glob("*/metrics/metrics"), key=lambda p: int(p.parts[-3]))
    return float(next(iter(json.loads(kept[-1].read_text()).values())))


def mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(out: pathlib.Path, variants: list[str], seeds: list[int], test: TestSet) -> str:
    header = ["variant", "seeds", "val Dice"] + [f"{r.upper()} Dice" for r in REGIONS] + ["train s/step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        workdirs = [out / variant / f"seed{s}" for s in seeds]
        metrics = [json.loads((test.eval_dir(w) / "metrics.json").read_text())["regions"] for w in workdirs]
        steps = [json.loads((w / "train_summary.json").read_text())["median_step_seconds"] for w in workdirs]
        cells = [variant, ",".join(map(str, seeds)), mean_sd([validation_dice(w) for w in workdirs])]
        cells += [mean_sd([m[r]["dice"]["mean"] for m in metrics]) for r in REGIONS]
        cells.append(f"{np.median(steps):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_case_dice(workdirs: list[pathlib.Path], test: TestSet) -> tuple[list[str], dict[str, np.ndarray]]:
    """Sorted case ids, and region -> (seeds, cases) Dice."""
    runs = []
    for w in workdirs:
        with (test.eval_dir(w) / "per_case.csv").open() as f:
            runs.append({row["case_id"]: row for row in csv.DictReader(f)})
    cases = sorted(runs[0])
    if any(sorted(r) != cases for r in runs):
        raise SystemExit(f"the runs in {[str(w) for w in workdirs]} were tested on different cases")
    return cases, {
        r: np.array([[float(run[c][f"{r}_dice"]) for c in cases] for run in runs]) for r in REGIONS
    }


def paired(out: pathlib.Path, variants: list[str], seeds: list[int], test: TestSet) -> str:
    """Each variant minus the first, case by case (Dice averaged over seeds): the mean difference with a
    95% bootstrap interval over the cases, and on how many cases the variant is ahead / behind; over all
    cases, then over the cases with a lesion. And how often each variant leaves a tumour-free case empty
    (the only way to score Dice 1 there; one false voxel scores 0)."""
    per_variant = {v: per_case_dice([out / v / f"seed{s}" for s in seeds], test) for v in variants}
    cases = per_variant[variants[0]][0]
    free = np.array([test.tumour_free(c) for c in cases])
    text = ""
    for title, keep in (("all cases", np.ones_like(free)), ("cases with a lesion", ~free)):
        text += (
            paired_table(
                variants,
                {v: {r: a.mean(0)[keep] for r, a in per_variant[v][1].items()} for v in variants},
                title,
            )
            + "\n"
        )
    clean = [
        f"{v} {int((per_variant[v][1]['wt'][:, free] == 1.0).sum())} / {free.sum() * len(seeds)}"
        for v in variants
    ]
    return text + "Tumour-free cases left empty (case × seed): " + ", ".join(clean) + "\n"


def paired_table(variants: list[str], dice: dict[str, dict[str, np.ndarray]], title: str) -> str:
    reference = variants[0]
    header = ["variant", f"minus {reference}, {title}"] + [
        f"{r.upper()} Δ Dice [95% CI], ahead / behind" for r in REGIONS
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rng = np.random.default_rng(0)
    for variant in variants[1:]:
        cells = [variant, f"{len(dice[variant]['wt'])} cases"]
        for r in REGIONS:
            diff = dice[variant][r] - dice[reference][r]
            boot = diff[rng.integers(0, len(diff), (10_000, len(diff)))].mean(1)
            low, high = np.percentile(boot, [2.5, 97.5])
            ahead, behind = int((diff > 1e-6).sum()), int((diff < -1e-6).sum())
            cells.append(f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}], {ahead} / {behind}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", default="runs/strategies")
    parser.add_argument("--preset", default="")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--test_phantom_cases", type=int, default=0, help="0: the test split (9 cases)")
    parser.add_argument("--test_phantom_seed", type=int, default=1)
    parser.add_argument("--paired", action="store_true", help="also each variant minus the first, by case")
    args, extra = parser.parse_known_args(argv)
    if any(not o.startswith("--config.") for o in extra):
        parser.error(f"unknown arguments {extra}; only --config.* overrides are passed through")
    out = pathlib.Path(args.out).resolve()
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    test = TestSet(args.test_phantom_cases, args.test_phantom_seed)
    for variant in variants:
        for seed in seeds:
            run(variant, seed, out, args.preset, extra, test)
    text = table(out, variants, seeds, test)
    if args.paired:
        text += "\n" + paired(out, variants, seeds, test)
    suffix = test.name.removeprefix("eval")
    (out / f"strategies_seeds{'_'.join(map(str, seeds))}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
