"""Backend-aware runtime defaults: XLA:CPU flags and host devices, compilation cache, compute dtype.

`configure()` must run before JAX initialises a backend (the CLIs call it first thing; a notebook
calls it in its first cell). It only *adds* settings: a flag already in XLA_FLAGS is never changed,
and DIFFSEG_XLA_DEFAULTS=0 turns the flag defaults off (JAX's out-of-the-box behaviour).
On CPU the defaults are what `bench/speed.py` measured fastest on our nets (docs/results.md, "Speed"): XLA's
own settings on one device. Turning the cores into host devices (`DIFFSEG_CPU_DEVICES=<n>`, sharding the
batch) and XLA:CPU's YNN fusion switch were both measured and neither was faster on 2 cores; they stay
available for machines where they are.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import MutableMapping

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# XLA:CPU's experimental YNN fusion of convolutions and dots (bench setup "ynn_off" turns it off).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_FLAG_DEFAULTS: dict[str, str] = {}  # measured: nothing beat XLA's own settings (docs/results.md, "Speed")
DEFAULTS_SWITCH = "DIFFSEG_XLA_DEFAULTS"
CPU_DEVICES_ENV = "DIFFSEG_CPU_DEVICES"


def env_int(env: MutableMapping[str, str], name: str) -> int:
    """An integer environment variable, or a ValueError that names it and its value."""
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def default_xla_flags(cpu_devices: int | None = None) -> dict[str, str]:
    """The flags `configure` adds on top of the user's: XLA:CPU settings and the host-device count.

    `cpu_devices` None -> one host device (measured fastest on 2 cores); tests and multi-host runs still
    exercise the sharded multi-device path.
    """
    flags = dict(CPU_FLAG_DEFAULTS)
    if cpu_devices:
        flags[DEVICE_COUNT_FLAG] = str(cpu_devices)
    return flags


def merge_xla_flags(existing: str, defaults: dict[str, str]) -> str:
    """`existing` plus every default whose flag name it does not already mention."""
    present = {_flag_name(f) for f in existing.split()}
    added = [f"{name}={value}" for name, value in defaults.items() if name not in present]
    return " ".join([existing.strip(), *added]).strip()


def configure(
    cpu_devices: int | None = None, environ: MutableMapping[str, str] | None = None
) -> MutableMapping[str, str]:
    """Sets the measured-fastest XLA defaults in the environment before JAX starts; returns it."""
    env = os.environ if environ is None else environ
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (tf.data only) stays quiet
    if cpu_devices is None and env.get(CPU_DEVICES_ENV):
        cpu_devices = env_int(env, CPU_DEVICES_ENV)
    if env.get(DEFAULTS_SWITCH, "1") != "0":
        flags = merge_xla_flags(env.get("XLA_FLAGS", ""), default_xla_flags(cpu_devices))
        if flags:
            env["XLA_FLAGS"] = flags
    return env


def compilation_cache_dir() -> pathlib.Path:
    """$DIFFSEG_CACHE/xla (default ~/.cache/diffseg_jax/xla), next to the generated datasets."""
    root = os.environ.get("DIFFSEG_CACHE") or pathlib.Path.home() / ".cache" / "diffseg_jax"
    return pathlib.Path(root) / "xla"


def enable_compilation_cache(
    directory: str | os.PathLike | None = None, min_compile_seconds: float = 0.5
) -> pathlib.Path:
    """Persistent XLA compilation cache: a second run of the same config starts without compiling.

    Programs that compiled in under `min_compile_seconds` are not worth a disk entry.
    DIFFSEG_COMPILATION_CACHE=0 turns it off; JAX_COMPILATION_CACHE_DIR, when set, wins.
    """
    import jax

    if os.environ.get("DIFFSEG_COMPILATION_CACHE", "1") == "0":
        return pathlib.Path()
    path = pathlib.Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory or compilation_cache_dir())
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def compute_dtype(name: str):
    """config.model.dtype -> a jnp dtype; 'auto' is bfloat16 on GPU/TPU and float32 on CPU."""
    import jax
    import jax.numpy as jnp

    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {name!r}; expected auto, float32, bfloat16 or float16")
    return jnp.dtype(name)
