"""Speed benchmarks (not tests): train step, sampling, input pipeline. Prints one JSON object per line.

    python bench/speed.py                        # everything at the default size (about 40 min on 2 cores)
    python bench/speed.py --only=train --presets=default,paper --repeats=3
    python bench/speed.py --only=sampling --out=bench/results/sampling.jsonl

Every measurement runs in its own subprocess, so XLA flags apply before JAX starts and the peak
memory (max RSS) is that measurement's. Train setups are interleaved round by round (`--repeats`), so
a noisy shared machine hits them alike; compare setups within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_NCPU = os.cpu_count() or 1
_YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
# name -> (XLA_FLAGS, whether diffseg_jax.runtime.configure() runs): the project's default is "project".
XLA_SETUPS = {
    "jax_out_of_the_box": ("", False),
    "project": ("", True),
    "ynn_off": (_YNN_OFF, False),
    "host_devices": (f"--xla_force_host_platform_device_count={_NCPU}", False),
    "host_devices_ynn_off": (f"--xla_force_host_platform_device_count={_NCPU} {_YNN_OFF}", False),
    # XLA:CPU's older loop emitters for fusions: half the compile time of the tests' tiny programs.
    "loop_emitters": ("--xla_cpu_use_fusion_emitters=false", True),
}


def machine_peak() -> dict:
    """This machine's float32 peak from /proc/cpuinfo: cores x clock x vector lanes x 2 (an FMA is two FLOPs)
    x FMA units per core. The unit count is not in /proc/cpuinfo: server cores with AVX-512 have two (Intel
    Xeon Gold/Platinum, AMD Zen 4 double-pumped), some one; both peaks are given."""
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    mhz = [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    clock_ghz = max(mhz) / 1000.0 if mhz else float("nan")
    per_unit = _NCPU * clock_ghz * lanes * 2
    return {
        "cores": _NCPU,
        "clock_ghz": clock_ghz,
        "float32_lanes": lanes,
        "peak_gflops_1_fma_unit": round(per_unit, 1),
        "peak_gflops_2_fma_units": round(2 * per_unit, 1),
    }


def _flops(compiled) -> float | None:
    """FLOPs of one call of a compiled program, from XLA's cost analysis (None if it gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _utilisation(flops: float | None, seconds: float) -> dict:
    if not flops:
        return {}
    achieved = flops / seconds / 1e9
    peak = machine_peak()
    return {
        "gflop_per_call": round(flops / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "fraction_of_peak_1_fma_unit": round(achieved / peak["peak_gflops_1_fma_unit"], 3),
        "fraction_of_peak_2_fma_units": round(achieved / peak["peak_gflops_2_fma_units"], 3),
    }


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(method: str, preset: str, overrides: dict | None = None):
    import importlib

    config = importlib.import_module(f"configs.{method}").get_config(preset)
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def _random_batch(config, batch_size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    size, channels = config.data.image_size, 3 if config.data.target == "regions" else 1
    return {
        "image": rng.normal(size=(batch_size, size, size, 4)).astype(np.float32),
        "label": (rng.random((batch_size, size, size, channels)) > 0.95).astype(np.float32),
    }


def compiled_train_step(config):
    """(the compiled train step, a fresh train state, a random global batch, compile seconds) for `config`."""
    import jax

    from diffseg_jax import parallel, train
    from diffseg_jax.methods.registry import build_method
    from diffseg_jax.train_state import create_train_state

    method = build_method(config)
    batch = _random_batch(config, config.train.batch_size)
    mesh = parallel.make_mesh()
    state = create_train_state(config, method, {k: v[:1] for k, v in batch.items()})
    state = jax.device_put(state, parallel.replicated(mesh))
    step_fn = train.make_train_step(method, config, mesh)
    global_batch = parallel.global_batch(mesh, batch)
    tic = time.perf_counter()
    compiled = step_fn.lower(state, global_batch).compile()
    return compiled, state, global_batch, time.perf_counter() - tic


def worker_train(args) -> dict:
    """Compile seconds, median step seconds, images/s and memory of one method's train step."""
    import jax
    import numpy as np

    config = _config(args.method, args.preset)
    compiled, state, global_batch, compile_seconds = compiled_train_step(config)
    memory = compiled.memory_analysis()
    times = []
    for _ in range(args.steps):
        tic = time.perf_counter()
        state, metrics = compiled(state, global_batch)
        float(metrics["loss"])
        times.append(time.perf_counter() - tic)
    steady = times[1:] or times
    step_seconds = float(np.median(steady))
    return {
        "devices": jax.device_count(),
        "batch_size": config.train.batch_size,
        "image_size": config.data.image_size,
        "compile_seconds": round(compile_seconds, 2),
        "median_step_seconds": round(step_seconds, 4),
        "train_images_per_second": round(config.train.batch_size / step_seconds, 2),
        **_utilisation(_flops(compiled), step_seconds),
        "xla_temp_mb": round(memory.temp_size_in_bytes / 2**20, 1) if memory else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def worker_sampling(args) -> dict:
    """Seconds per slice and per 155-slice case of the stepwise-uncertainty sampler (random weights)."""
    import jax

    from diffseg_jax import inference, parallel
    from diffseg_jax.methods.registry import build_method

    overrides = {
        "sampling.method": args.sampler,
        "sampling.num_steps": args.num_steps,
        "sampling.num_samples": args.num_samples,
    }
    config = _config(args.method, args.preset, overrides)
    method = build_method(config)
    mesh = parallel.make_mesh()
    batch_size = config.eval.batch_size
    params = method.init(jax.random.PRNGKey(0), {k: v[:1] for k, v in _random_batch(config, 1).items()})
    predict_fn = inference.make_predict_fn(method, mesh)
    images = _random_batch(config, args.slices)["image"]
    key = jax.random.PRNGKey(1)
    first = jax.device_put(images[:batch_size], parallel.data_sharded(mesh))
    tic = time.perf_counter()
    compiled = predict_fn.lower(params, first, key).compile()
    compile_seconds = time.perf_counter() - tic
    memory = compiled.memory_analysis()
    jax.block_until_ready(predict_fn(params, first, key))
    tic = time.perf_counter()
    inference.predict_slices(predict_fn, params, images, key, mesh, **inference.eval_batching(config))
    seconds = time.perf_counter() - tic
    per_slice = seconds / args.slices
    steps = 1000 if args.sampler == "ddpm" else args.num_steps
    # one call of the compiled program samples one slice batch (concurrent calls: the throughput's share)
    batch_seconds = per_slice * batch_size
    return {
        "sampler": args.sampler,
        "num_steps": steps,
        "num_samples": args.num_samples,
        "slices_timed": args.slices,
        "network_evaluations_per_slice": steps * args.num_samples,
        "compile_seconds": round(compile_seconds, 2),
        "seconds_per_slice": round(per_slice, 4),
        "seconds_per_155_slice_case": round(per_slice * 155, 1),
        # XLA's cost analysis counts a loop body once: x steps is an upper bound (the condition encoder, run
        # once per slice, is counted every step), so the utilisation below is an upper bound too.
        **_utilisation(_flops(compiled) * steps if _flops(compiled) else None, batch_seconds),
        "flops_are_upper_bound": True,
        "per_case_is_extrapolated": args.slices < 155,
        "xla_temp_mb": round(memory.temp_size_in_bytes / 2**20, 1) if memory else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def worker_pipeline(args) -> dict:
    """tf.data examples/s on the embedded data's train split (augmentation on)."""
    import numpy as np

    from data_pipelines import input_pipeline, sources

    config = _config(args.method, args.preset)
    splits = sources.load_splits(config, progress=False)
    arrays = sources.slice_arrays(config, splits["train"], config.seed, progress=False)
    batches = input_pipeline.train_batches(
        arrays, global_batch_size=config.train.batch_size, seed=0, augment=config.data.augment
    )
    for _ in range(5):
        next(batches)
    rates = []
    for _ in range(3):
        tic = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
        rates.append(args.steps * config.train.batch_size / (time.perf_counter() - tic))
    return {"examples_per_second": round(float(np.median(rates)), 1), "train_slices": len(arrays["image"])}


WORKERS = {"train": worker_train, "sampling": worker_sampling, "pipeline": worker_pipeline}


def run_worker(kind: str, setup: str, **kwargs) -> dict:
    """One measurement in a fresh interpreter with the setup's XLA flags; returns its JSON record."""
    flags, configure = XLA_SETUPS[setup]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = flags
    env["DIFFSEG_XLA_DEFAULTS"] = "1" if configure else "0"
    env["DIFFSEG_COMPILATION_CACHE"] = "0"  # compile seconds are measured, not read from a cache
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = [sys.executable, __file__, f"--worker={kind}"]
    cmd += [f"--{k}={v}" for k, v in kwargs.items()]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    record = {"bench": kind, "setup": setup, **kwargs}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        record["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    else:
        record.update(json.loads(lines[-1]))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="train,sampling,pipeline", help="comma list of benches")
    parser.add_argument("--methods", default="btsegdiff,medsegdiff_v1,medsegdiff_v2,unet_baseline")
    parser.add_argument("--presets", default="default", help="e.g. default,paper")
    parser.add_argument("--setups", default=",".join(XLA_SETUPS), help="XLA setups for the train bench")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the interleaved train setups")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--ddpm_samples", default="1", help="S values of the (slow) full-chain bench")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    # worker-only arguments
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="btsegdiff", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--sampler", default="ddim", help=argparse.SUPPRESS)
    parser.add_argument("--num_steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--num_samples", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=int, default=155, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if os.environ.get("DIFFSEG_XLA_DEFAULTS") == "1":
            from diffseg_jax import runtime

            runtime.configure()
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return

    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed below
    print(json.dumps({"bench": "machine", **machine_peak()}), flush=True)

    def emit(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    only = args.only.split(",")
    methods, presets = args.methods.split(","), args.presets.split(",")
    if "train" in only:
        for preset in presets:
            steps = args.steps if preset != "paper" else 3
            for method in methods:
                for _ in range(args.repeats):
                    for setup in args.setups.split(","):
                        emit(run_worker("train", setup, method=method, preset=preset, steps=steps))
    if "sampling" in only:
        # K = 100 is timed on 32 slices (per case extrapolated, flagged): its memory is the point.
        runs = [dict(num_steps=10, num_samples=s, slices=155) for s in (1, 3, 5)]
        runs += [dict(num_steps=100, num_samples=s, slices=32) for s in (1, 3, 5)]
        runs += [dict(sampler="ddpm", num_samples=int(s), slices=16) for s in args.ddpm_samples.split(",")]
        for run in runs:
            emit(run_worker("sampling", "project", method="btsegdiff", **run))
    if "pipeline" in only:
        emit(run_worker("pipeline", "project", method="btsegdiff", steps=50))
    if out:
        out.close()


if __name__ == "__main__":
    main()
