"""The measurements of bench/accelerator_check.py, each run in a subprocess of its own.

    python bench/accelerator_workers.py --worker=train --method=unet_baseline --preset=smoke --batch=1

One process per measurement, so a memory peak is its own and a GPU/TPU is released when it ends:
`memory` compiles (never runs) the train step for each of `--batches`; `train` times the train step;
`sample` times the preset's sampler on one slice batch. Each prints one JSON object per line; the driver
(bench/accelerator_check.py) collects them into its tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import re
import sys
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import speed  # noqa: E402  (bench/ is not a package)

GIB = 2**30
# (device, pattern on device.device_kind, bfloat16 TFLOP/s, float32 TFLOP/s): vendor dense peaks.
# V100 and T4 have no bfloat16 tensor cores: their first figure is the float16 one. On A100/H100/L4, XLA's
# default precision computes float32 convolutions in TF32, so a float32 utilisation can pass 1. TPUs compute
# float32 matmuls in bfloat16 passes at default precision: one figure for both.
PEAK_TFLOPS: tuple[tuple[str, str, float, float], ...] = (
    ("H100 PCIe", r"H100.*PCIe", 756.0, 51.0),
    ("H100 SXM", r"H100", 989.0, 67.0),
    ("A100", r"A100", 312.0, 19.5),
    ("V100", r"V100", 125.0, 15.7),
    ("T4", r"\bT4\b", 65.0, 8.1),
    ("L4", r"\bL4\b", 121.0, 30.3),
    ("TPU v4", r"TPU v4", 275.0, 275.0),
    ("TPU v5e", r"TPU v5 ?lite|TPU v5e", 197.0, 197.0),
    ("TPU v5p", r"TPU v5p?$", 459.0, 459.0),
    ("TPU v6e", r"TPU v6 ?lite|TPU v6e", 918.0, 918.0),
)


# ----------------------------------------------------------------------------------------- helpers (workers)


def _overrides(remat: str | None = None, dtype: str | None = None, batch: int | None = None) -> dict:
    """Config overrides of one measurement; None keeps the preset's value."""
    out: dict = {}
    if remat:
        out["model.remat"] = remat == "on"
    if dtype:
        out["model.dtype"] = dtype
    if batch:
        out["train.batch_size"] = batch
    return out


def _rss_mb() -> float:
    """The current (not peak) resident memory: whether it grows over a worker's compiles."""
    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_figures(memory) -> dict:
    """GiB figures of `compiled.memory_analysis()`; peak = arguments + outputs - aliased + temp + code."""
    if memory is None:
        return {}
    parts = {
        "argument": memory.argument_size_in_bytes,
        "output": memory.output_size_in_bytes,
        "alias": memory.alias_size_in_bytes,
        "temp": memory.temp_size_in_bytes,
        "code": memory.generated_code_size_in_bytes,
    }
    peak = parts["argument"] + parts["output"] - parts["alias"] + parts["temp"] + parts["code"]
    figures = {f"{name}_gib": round(value / GIB, 3) for name, value in parts.items()}
    return {"peak_gib_compiled": round(peak / GIB, 3), "peak_bytes_compiled": peak, **figures}


def device_peak_tflops(kind: str, dtype_name: str, override: float | None) -> tuple[float | None, str]:
    """The peak FLOP/s (TFLOP/s) that utilisation is measured against, and where it came from."""
    if override:
        return override, "--peak_tflops"
    low_precision = dtype_name in ("bfloat16", "float16")
    for device, pattern, bf16, fp32 in PEAK_TFLOPS:
        if re.search(pattern, kind):
            return (bf16 if low_precision else fp32), f"vendor dense peak, {device}"
    if kind.lower() == "cpu":
        return speed.machine_peak()["peak_gflops_2_fma_units"] / 1e3, "speed.machine_peak, 2 FMA units"
    return None, f"unknown device kind {kind!r}: give --peak_tflops"


def _device_utilisation(flops: float | None, seconds: float, dtype_name: str, override: float | None) -> dict:
    import jax

    kind = jax.devices()[0].device_kind
    peak, source = device_peak_tflops(kind, dtype_name, override)
    out: dict = {"device_kind": kind, "peak_tflops": peak, "peak_source": source}
    if flops:
        achieved = flops / seconds / 1e12
        out.update(gflop_per_call=round(flops / 1e9, 2), achieved_tflops=round(achieved, 4))
        if peak:
            out["flop_utilisation"] = round(achieved / peak, 4)
    if kind.lower() == "cpu":
        out.update(speed._utilisation(flops, seconds))  # bench/speed.py's figures, for comparison
    return out


def _device_peak_gib() -> dict:
    """`memory_stats()` of the first local device (GPU/TPU; None on CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return {}
    out = {"peak_gib_device": round(stats["peak_bytes_in_use"] / GIB, 3)}
    if "bytes_limit" in stats:
        out["device_limit_gib"] = round(stats["bytes_limit"] / GIB, 3)
    return out


def _peak_memory(compiled) -> dict:
    """Peak memory from the device when it reports it, else the compiled program's analysis."""
    figures = {**memory_figures(compiled.memory_analysis()), **_device_peak_gib()}
    source = "device.memory_stats" if "peak_gib_device" in figures else "compiled.memory_analysis"
    peak = figures.get("peak_gib_device", figures.get("peak_gib_compiled"))
    return {"peak_gib": peak, "memory_source": source, **figures}


def _abstract_train_inputs(config, method, mesh, batch_size: int):
    """ShapeDtypeStructs of the train state and a batch: lowering needs shapes, not arrays."""
    import jax

    from diffseg_jax import parallel
    from diffseg_jax.train_state import create_train_state

    sample = {k: v[:1] for k, v in speed._random_batch(config, 1).items()}
    state = jax.eval_shape(lambda: create_train_state(config, method, sample))
    rep, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), state)
    batch = {
        k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=sharded)
        for k, v in sample.items()
    }
    return state, batch


def saved_residual_bytes(loss_fn, params, batch) -> int | None:
    """Bytes the backward pass keeps from the forward one (parameters and batch aside), read off the jaxpr
    before any compiler: what remat and bfloat16 save on every backend. None if JAX lacks the helper."""
    try:
        from jax._src.ad_checkpoint import saved_residuals  # behind jax.ad_checkpoint.print_saved_residuals
    except ImportError:
        return None
    found = saved_residuals(loss_fn, params, batch)
    return sum(
        math.prod(a.shape) * a.dtype.itemsize for a, source in found if "from the argument" not in source
    )


def _compute_dtype_name(config) -> str:
    from diffseg_jax import runtime

    return str(runtime.compute_dtype(config.model.get("dtype", "float32")).__name__)


def _sampler_steps(config) -> int:
    """Network evaluations per chain of the preset's sampler (1 for a one-pass method)."""
    from diffseg_jax.diffusion.samplers import sampling_timesteps

    if "diffusion" not in config:
        return 1
    s = config.sampling
    return len(sampling_timesteps(config.diffusion.num_steps, None if s.method == "ddpm" else s.num_steps))


# ------------------------------------------------------------------------------------------------ workers


def worker_memory(args) -> Iterator[dict]:
    """Compiles (never runs) the train step once per batch of `--batches`; one record per batch."""
    import jax

    from diffseg_jax import parallel, train
    from diffseg_jax.methods.registry import build_method

    mesh = parallel.make_mesh(jax.devices()[:1])  # one device: the figures are per device
    config = speed._config(args.method, args.preset, _overrides(args.remat, args.dtype))
    method = build_method(config)
    key = jax.random.PRNGKey(0)
    for batch_size in [int(b) for b in args.batches.split(",")]:
        state, batch = _abstract_train_inputs(config, method, mesh, batch_size)
        step_fn = train.make_train_step(method, config, mesh)
        tic = time.perf_counter()
        lowered = step_fn.lower(state, batch)
        lower_seconds = time.perf_counter() - tic
        compiled = lowered.compile()
        compile_seconds = time.perf_counter() - tic - lower_seconds
        residuals = saved_residual_bytes(lambda p, b: method.loss(p, b, key)[0], state.params, batch)
        yield {
            "batch": batch_size,
            "lower_seconds": round(lower_seconds, 1),
            "compile_seconds": round(compile_seconds, 1),
            "backend": jax.default_backend(),
            **memory_figures(compiled.memory_analysis()),
            "saved_residual_gib": None if residuals is None else round(residuals / GIB, 3),
            "gflop_per_step": round((speed._flops(compiled) or 0.0) / 1e9, 1),
            "worker_rss_mb": round(_rss_mb()),
        }
        del lowered, compiled, step_fn
        jax.clear_caches()
        gc.collect()


def worker_train(args) -> Iterator[dict]:
    """Compile seconds, step seconds, images/s, peak memory and FLOP utilisation of the train step."""
    import jax
    import numpy as np

    config = speed._config(args.method, args.preset, _overrides(args.remat, args.dtype, args.batch))
    batch_size = config.train.batch_size
    compiled, state, batch, compile_seconds = speed.compiled_train_step(config)
    times = []
    for _ in range(1 + args.steps):  # the first call is a warm-up
        tic = time.perf_counter()
        state, metrics = compiled(state, batch)
        float(metrics["loss"])
        times.append(time.perf_counter() - tic)
    seconds = float(np.median(times[1:]))
    yield {
        "batch": batch_size,
        "image_size": config.data.image_size,
        "dtype": _compute_dtype_name(config),
        "remat": bool(config.model.get("remat", False)),
        "devices": jax.device_count(),
        "compile_seconds": round(compile_seconds, 1),
        "first_step_seconds": round(times[0], 3),
        "step_seconds": round(seconds, 3),
        "images_per_second": round(batch_size / seconds, 3),
        **_peak_memory(compiled),
        **_device_utilisation(speed._flops(compiled), seconds, _compute_dtype_name(config), args.peak_tflops),
        "peak_rss_mb": round(speed._peak_rss_mb()),
    }


def worker_sample(args) -> Iterator[dict]:
    """Compile seconds, slices/s, peak memory and FLOP utilisation of the preset's sampler on one batch."""
    import jax
    import numpy as np

    from diffseg_jax import inference, parallel
    from diffseg_jax.methods.registry import build_method

    config = speed._config(args.method, args.preset, _overrides(args.remat, args.dtype))
    batch_size = args.batch or config.eval.batch_size
    method = build_method(config)
    mesh = parallel.make_mesh()
    arrays = speed._random_batch(config, batch_size)
    params = method.init(jax.random.PRNGKey(0), {k: v[:1] for k, v in arrays.items()})
    params = jax.device_put(params, parallel.replicated(mesh))
    images = jax.device_put(arrays["image"], parallel.data_sharded(mesh))
    key = jax.random.PRNGKey(1)
    tic = time.perf_counter()
    compiled = inference.make_predict_fn(method, mesh).lower(params, images, key).compile()
    compile_seconds = time.perf_counter() - tic
    times = []
    for i in range(1 + args.steps):  # the first call is timed apart (one-off start-up costs)
        tic = time.perf_counter()
        jax.block_until_ready(compiled(params, images, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - tic)
    seconds = float(np.median(times[1:]))
    steps = _sampler_steps(config)
    flops = speed._flops(compiled)
    total_flops = flops * steps if flops and steps > 1 else flops
    yield {
        "batch": batch_size,
        "image_size": config.data.image_size,
        "dtype": _compute_dtype_name(config),
        "devices": jax.device_count(),
        "sampler": config.sampling.method if steps > 1 else "one pass",
        "sampler_steps": steps,
        "num_samples": config.sampling.num_samples if steps > 1 else 1,
        "compile_seconds": round(compile_seconds, 1),
        "first_call_seconds": round(times[0], 3),
        "call_seconds": round(seconds, 3),
        "images_per_second": round(batch_size / seconds, 3),
        **_peak_memory(compiled),
        **_device_utilisation(total_flops, seconds, _compute_dtype_name(config), args.peak_tflops),
        "flops_are_upper_bound": steps > 1,
        "peak_rss_mb": round(speed._peak_rss_mb()),
    }


WORKERS = {"memory": worker_memory, "train": worker_train, "sample": worker_sample}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", choices=tuple(WORKERS), required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batches", default="1", help="memory: per-device batches")
    parser.add_argument(
        "--batch", type=int, default=None, help="train/sample: global batch (default: the preset's)"
    )
    parser.add_argument("--remat", default=None, help="off or on (default: the preset's)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the preset's)")
    parser.add_argument("--steps", type=int, default=2, help="timed calls after the warm-up one")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's peak, TFLOP/s")
    args = parser.parse_args()

    from diffseg_jax import runtime

    runtime.configure()
    for record in WORKERS[args.worker](args):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
