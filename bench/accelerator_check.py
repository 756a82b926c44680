"""Will the paper preset (256 px) fit and run on a GPU/TPU? Memory per device, step times, FLOP utilisation.

    python bench/accelerator_check.py --mode=memory --out=runs/accelerator/memory.jsonl  # any machine
    python bench/accelerator_check.py --mode=memory --methods=btsegdiff --batches=1,2,4,8,16,32
    python bench/accelerator_check.py --mode=time             # one 256-px train step per method, here
    python bench/accelerator_check.py                         # on a GPU/TPU: --mode=accelerator
    python bench/accelerator_check.py --mode=accelerator --methods=unet_baseline --preset=smoke

--mode=memory (the default without a GPU/TPU) lowers and compiles each method's train step for each batch,
remat off/on and compute dtype (float32, bfloat16) without running it (abstract inputs: nothing large is
allocated) and reads XLA's memory analysis of the compiled program: peak per device = arguments + outputs
- aliased (the donated train state comes back in place, so it counts once) + temporaries + generated code.
Batches are per device (data parallelism replicates the state). The largest batch that fits 16, 40 and
80 GiB keeps 10% headroom; it is given from the measured batches and from the straight line through them
(extrapolated: activations grow linearly in batch). Each record also has the activations the backward pass
keeps (`saved_residual_gib`), read off the jaxpr before any compiler fuses or schedules.
Figures compiled for a CPU estimate a GPU/TPU's, whose compilers fuse and schedule differently: run the same
mode on the accelerator for its own. On XLA:CPU remat does not lower the peak (the same bytes, measured),
where the saved residuals shrink 4-5x: they show what remat saves where the compiler keeps the recomputation
in the backward pass. JAX on a GPU preallocates 75% of the memory (XLA_PYTHON_CLIENT_MEM_FRACTION=.95
raises it): compare the peaks with that share.
On 2 CPU cores one 256-px compile takes 30-50 s, so the full grid (5 methods x 6 batches x 2 x 2, 120
compiles) takes well over an hour: the default measures batches 1, 8 and 32 (about 50 min) and marks the
others '~', read off the line through those three (--batches=1,2,4,8,16,32 measures all). One subprocess
per (method, remat, dtype) compiles its batches in turn.

--mode=time runs the train step at 256 px on this machine (batch 1 by default; --batch for another).
--mode=accelerator (the default on a GPU/TPU) times each method's train step at the preset's batch and its
sampler (`inference.make_predict_fn`, the preset's sampling config) on one slice batch (eval.batch_size):
images/s, compile seconds, peak memory (`device.memory_stats()`, else the compiled memory analysis) and
FLOP utilisation = XLA cost-analysis FLOPs / time / the device's peak (--peak_tflops, else the vendor dense
peak of `device.device_kind` in `accelerator_workers.PEAK_TFLOPS`; on a CPU, `speed.machine_peak`). Cost
analysis counts a loop body once: sampling FLOPs are the body x the sampler's steps, an upper bound (the
condition encoder runs once per slice). On a sharded program the FLOPs and memory are one device's share.
On a CPU the figures are CPU figures (a warning says so).

Prints one JSON object per line (also to --out) and a markdown table at the end. Every measurement is a
subprocess of bench/accelerator_workers.py (one at a time), so memory peaks are its own and a GPU/TPU is
never held by this process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("btsegdiff", "medsegdiff_v1", "medsegdiff_v2", "unet_baseline", "shaspec")
DEVICE_GIB = (16, 40, 80)
ALL_BATCHES = (1, 2, 4, 8, 16, 32)
HEADROOM = 0.10  # of the device's memory kept free (allocator fragmentation, the runtime's own buffers)
GIB = 2**30


def run_worker(kind: str, **kwargs) -> Iterator[dict]:
    """One subprocess; yields its records as they come (a memory worker compiles several batches)."""
    env = {**os.environ, "DIFFSEG_COMPILATION_CACHE": "0"}  # compile seconds are measured, not read
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    given = {k: v for k, v in kwargs.items() if v is not None}
    worker = ROOT / "bench" / "accelerator_workers.py"
    cmd = [sys.executable, str(worker), f"--worker={kind}", *(f"--{k}={v}" for k, v in given.items())]
    base = {"bench": kind, **{k: v for k, v in given.items() if k not in ("batches", "steps")}}
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: a long traceback cannot block
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        got = 0
        for line in proc.stdout:
            if line.startswith("{"):
                got += 1
                yield {**base, **json.loads(line)}
        if proc.wait() or not got:
            stderr.seek(0)
            yield {**base, "error": _error_line(stderr.read(), proc.returncode)}


def _error_line(stderr: str, returncode: int) -> str:
    """The exception line of a worker's traceback (JAX appends a note after it), else its last line."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line)]
    return (errors or lines or [f"exit code {returncode}"])[-1]


# -------------------------------------------------------------------------------------------------- tables


def _largest_measured(points: list[tuple[int, float]], usable_gib: float) -> str:
    """The largest measured batch within `usable_gib`; '>=' when even the largest measured one fits."""
    fits = max((b for b, gib in points if gib <= usable_gib), default=0)
    return f">={fits}" if fits == max(b for b, _ in points) else str(fits)


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Slope and intercept of the least-squares line through (batch, GiB) points (NaN for one point)."""
    import numpy as np

    if len(points) < 2:
        return math.nan, math.nan
    slope, intercept = np.polyfit(*zip(*points, strict=True), 1)
    return float(slope), float(intercept)


def memory_fit(group: list[dict]) -> dict:
    """One method x remat x dtype: a straight line through the measured (batch, peak GiB) points, the
    largest batch per device size from the measured points and from the line (extrapolated), the line's
    value at the batches not measured (said so), and the saved activations per example."""
    first = group[0]
    record: dict = {"bench": "memory_fit", **{k: first[k] for k in ("method", "remat", "dtype")}}
    points = sorted((r["batch"], r["peak_bytes_compiled"] / GIB) for r in group)
    record["measured_batches"] = [b for b, _ in points]
    slope, intercept = _line(points)
    line = {b: intercept + slope * b for b in ALL_BATCHES}
    if len(points) > 1:
        record.update(
            gib_per_example=round(slope, 4),
            fixed_gib=round(intercept, 3),
            max_residual_gib=round(max(abs(g - line[b]) for b, g in points), 4),
            line_gib_unmeasured={b: round(g, 2) for b, g in line.items() if b not in dict(points)},
        )
    saved = sorted((r["batch"], r["saved_residual_gib"]) for r in group if r.get("saved_residual_gib"))
    if saved:
        per_example = _line(saved)[0] if len(saved) > 1 else saved[0][1] / saved[0][0]
        record["saved_activations_gib_per_example"] = round(per_example, 4)
    for capacity in DEVICE_GIB:
        usable = capacity * (1 - HEADROOM)
        record[f"max_batch_{capacity}gib_measured"] = _largest_measured(points, usable)
        if len(points) > 1 and slope > 0:
            record[f"max_batch_{capacity}gib_line"] = max(math.floor((usable - intercept) / slope), 0)
    return record


def memory_fits(records: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if r.get("bench") == "memory" and "peak_bytes_compiled" in r:
            groups.setdefault((r["method"], r["remat"], r["dtype"]), []).append(r)
    return [memory_fit(group) for group in groups.values()]


def memory_table(records: list[dict], fits: list[dict]) -> str:
    """Peak GiB per batch (measured; '~' from the line), and the largest batch per device size."""
    measured = {
        (r["method"], r["remat"], r["dtype"], r["batch"]): r["peak_bytes_compiled"] / GIB
        for r in records
        if r.get("bench") == "memory" and "peak_bytes_compiled" in r
    }
    batches = sorted({b for f in fits for b in f["measured_batches"]} | set(ALL_BATCHES))
    head = ["method", "remat", "dtype", *(f"B={b}" for b in batches), *(f"max B {c} GiB" for c in DEVICE_GIB)]
    head.append("saved act. GiB/ex")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fits:
        cells = []
        for b in batches:
            key = (f["method"], f["remat"], f["dtype"], b)
            line = f.get("line_gib_unmeasured", {}).get(b)
            cells.append(
                f"{measured[key]:.2f}" if key in measured else "" if line is None else f"~{line:.2f}"
            )
        for c in DEVICE_GIB:
            line = f.get(f"max_batch_{c}gib_line")
            cells.append(f[f"max_batch_{c}gib_measured"] + ("" if line is None else f" (line {line})"))
        cells.append(str(f.get("saved_activations_gib_per_example", "")))
        lines.append("| " + " | ".join([f["method"], f["remat"], f["dtype"], *cells]) + " |")
    failed = [r for r in records if r.get("bench") == "memory" and "error" in r]
    lines += [f"| {r['method']} | {r['remat']} | {r['dtype']} | error: {r['error'][:100]} |" for r in failed]
    backend = next((r["backend"] for r in records if "backend" in r), "?")
    note = (
        f"\nGiB per device, compiled for {backend}: peak = arguments + outputs - aliased + temporaries"
        f" + code. '~': not measured, the straight line through the measured batches"
        " (interpolated/extrapolated). "
        f"max B keeps {HEADROOM:.0%} headroom: the largest measured batch that fits, and (line) the line's. "
        "saved act.: activations kept for the backward pass per example, from the jaxpr (any backend)."
    )
    return "\n".join(lines) + note


def run_table(records: list[dict]) -> str:
    """One row per train / sampling measurement."""
    head = [
        "method",
        "bench",
        "batch",
        "dtype",
        "images/s",
        "s/call",
        "compile s",
        "peak GiB",
        "memory from",
        "FLOP util",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if r.get("bench") not in ("train", "sample"):
            continue
        if "error" in r:
            lines.append(f"| {r['method']} | {r['bench']} | error: {r['error'][:80]} |")
            continue
        util = r.get("flop_utilisation")
        row = [
            r["method"],
            r["bench"],
            r["batch"],
            r["dtype"],
            r["images_per_second"],
            r.get("step_seconds", r.get("call_seconds")),
            r["compile_seconds"],
            r["peak_gib"],
            r["memory_source"].split(".")[-1],
            ""
            if util is None
            else f"{util:.1%}" + (" (upper bound)" if r.get("flops_are_upper_bound") else ""),
        ]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main


def _grid(args, mode: str) -> Iterator[dict]:
    """The workers' records for `mode`, measurement by measurement (one subprocess at a time)."""
    methods = args.methods.split(",")
    remats = args.remat.split(",") if args.remat else ["off", "on"] if mode == "memory" else [None]
    dtypes = (
        args.dtypes.split(",") if args.dtypes else ["float32", "bfloat16"] if mode == "memory" else [None]
    )
    for method in methods:
        for remat in remats:
            for dtype in dtypes:
                common = dict(method=method, preset=args.preset, remat=remat, dtype=dtype)
                if mode == "memory":
                    yield from run_worker("memory", batches=args.batches, **common)
                    continue
                extra = dict(steps=args.steps, peak_tflops=args.peak_tflops)
                batch = args.batch or (1 if mode == "time" else None)
                yield from run_worker("train", batch=batch, **common, **extra)
                if mode == "accelerator":
                    yield from run_worker("sample", batch=args.batch, **common, **extra)


def _backend() -> str:
    """JAX's default backend, asked in a subprocess: a GPU/TPU client here would hold the device's memory
    (or, on a TPU, the device itself) while the workers run."""
    probe = "import jax; print(jax.default_backend())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode",
        choices=("memory", "time", "accelerator"),
        default=None,
        help="default: accelerator on a GPU/TPU, else memory",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batches", default="1,8,32", help="memory mode: per-device batches")
    parser.add_argument("--remat", default=None, help="off,on (memory default: both; else the preset's)")
    parser.add_argument(
        "--dtypes",
        default=None,
        help="compute dtypes, e.g. float32,bfloat16 (memory default: both; else the preset's)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="time/accelerator: global batch (default: 1 in time mode, else the preset's)",
    )
    parser.add_argument("--steps", type=int, default=2, help="timed calls after the warm-up one")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak, TFLOP/s")
    parser.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = parser.parse_args()

    on_accelerator = _backend() in ("gpu", "tpu")
    mode = args.mode or ("accelerator" if on_accelerator else "memory")
    if mode == "accelerator" and not on_accelerator:
        warnings.warn(
            "no GPU/TPU: --mode=accelerator measures this CPU; the figures are CPU figures", stacklevel=1
        )
    out = None
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        out = open(args.out, "w")  # noqa: SIM115 - closed below

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    records = []
    for record in _grid(args, mode):
        records.append(record)
        emit(record)
    if mode == "memory":
        fits = memory_fits(records)
        for record in fits:
            emit(record)
        table = memory_table(records, fits)
    else:
        table = run_table(records)
    if out:
        out.close()
    print("\n" + table)


if __name__ == "__main__":
    main()
