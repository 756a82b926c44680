"""Training data at the scale users have: peak memory, cache on disk, time to the first step and the input
pipeline's examples/s against the train step's need, for 12, 120 and 1,200 cases.

    python bench/data_scale.py --cases=12,120,1200 --presets=default,real --modes=disk --out=runs/data_scale
    python bench/data_scale.py --cases=12 --modes=memory,disk        # the two pipelines side by side

The cases are the labelled real ones (`--root`) repeated under new case ids (folders of symbolic links), so
every case is prepared like a distinct one. Each point is one `run_train.py` of `--steps` steps (BTSegDiff, no
validation) with a fresh cache (`DIFFSEG_CACHE`), so preparation is included (`--workers` processes): its
wall clock, the peak resident memory (`wait4`: the largest of the run and its preparation workers), the
cache's size, and the first and median step seconds. Then, in this process, the training split read back
from that cache feeds `input_pipeline.train_batches` (augmentation on): examples/s (median of three rounds)
against what the train step consumes (batch / median step seconds).
Modes: `memory` (the slices in one array) and `disk` (`data.slices_on_disk`). One JSON line per point.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "real" / "brats2018-twelve"


def repeated_cases(root: pathlib.Path, count: int, dest: pathlib.Path) -> pathlib.Path:
    """`count` case folders: the cases of `root` in turn, each under a new id (its files symbolic links)."""
    originals = sorted(p for p in root.iterdir() if p.is_dir())
    folder = dest / f"cases_{count}"
    if folder.is_dir():
        return folder
    for k in range(count):
        source = originals[k % len(originals)]
        case_id = f"{source.name}x{k:04d}"
        (folder / case_id).mkdir(parents=True)
        for file in source.iterdir():
            (folder / case_id / file.name.replace(source.name, case_id, 1)).symlink_to(file.resolve())
    return folder


def _folder_bytes(folder: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def train_run(args, preset: str, cases: pathlib.Path, mode: str, work: pathlib.Path) -> dict:
    """One run_train.py with a fresh cache: seconds, peak RSS, cache bytes, step seconds."""
    cache, workdir = work / "cache", work / "run"
    cmd = [
        sys.executable,
        str(ROOT / "run_train.py"),
        f"--config=configs/btsegdiff.py:{preset}",
        f"--workdir={workdir}",
        f"--config.data.root={cases}",
        f"--config.train.steps={args.steps}",
        "--config.train.eval_every=0",
        f"--config.data.slices_on_disk={mode == 'disk'}",
        f"--config.data.prepare_workers={args.workers}",
    ]
    tic = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "DIFFSEG_CACHE": str(cache)})
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - tic
    if status:
        raise SystemExit(f"run_train.py failed ({status}): {' '.join(cmd)}")
    summary = json.loads((workdir / "train_summary.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # Linux: KiB
        "cache_gb": round(_folder_bytes(cache / "slices") / 2**30, 2),
        "first_step_seconds": round(summary["first_step_seconds"], 1),
        "median_step_seconds": round(summary["median_step_seconds"], 3),
        "batch_size": summary["batch_size"],
        "cache": cache,
    }


def pipeline_rate(args, preset: str, cases: pathlib.Path, mode: str, cache: pathlib.Path) -> dict:
    """Examples/s of the training split read back from `cache` (median of three rounds after a warm-up)."""
    from pipeline_scale import throughput  # bench/ is the script's folder, on sys.path

    from data_pipelines import augmentation, sources

    config = importlib.import_module("configs.btsegdiff").get_config(preset)
    config.data.root, config.data.cache_dir = str(cases), str(cache)
    config.data.slices_on_disk = mode == "disk"
    train, _, _ = sources.training_slices(config, progress=False)
    augment = augmentation.from_config(config.data)
    rate = throughput(train, config.train.batch_size, args.batches, augment)["examples_per_second"]
    return {"train_slices": len(train["image"]), "examples_per_second": rate}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--root", default=str(REAL), help="labelled cases to repeat")
    parser.add_argument("--cases", default="12,120,1200")
    parser.add_argument("--presets", default="default,real")
    parser.add_argument("--modes", default="disk", help="memory, disk or both")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="preparation processes (0 = one per core)")
    parser.add_argument(
        "--work", default="", help="where the case folders and caches go (default: a temp dir)"
    )
    parser.add_argument("--out", default="runs/data_scale")
    args = parser.parse_args()

    from diffseg_jax import runtime

    runtime.configure()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_root = pathlib.Path(args.work or tempfile.mkdtemp(prefix="data_scale_"))
    for count in (int(c) for c in args.cases.split(",")):
        cases = repeated_cases(pathlib.Path(args.root), count, work_root)
        for preset in args.presets.split(","):
            for mode in args.modes.split(","):
                work = work_root / f"{preset}_{mode}_{count}"
                shutil.rmtree(work, ignore_errors=True)
                record = {"cases": count, "preset": preset, "mode": mode, "workers": args.workers}
                record.update(train_run(args, preset, cases, mode, work))
                record.update(pipeline_rate(args, preset, cases, mode, record.pop("cache")))
                need = record["batch_size"] / record["median_step_seconds"]
                record["train_step_examples_per_second"] = round(need, 1)
                record["headroom"] = round(record["examples_per_second"] / need, 1)
                line = json.dumps(record)
                print(line, flush=True)
                with open(out / "results.jsonl", "a") as f:
                    f.write(line + "\n")
                shutil.rmtree(work, ignore_errors=True)  # the caches of 1,200 cases are tens of GB


if __name__ == "__main__":
    main()
