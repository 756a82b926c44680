"""Devices, mesh and shardings: one data axis over every device of every process.

Batches are sharded on their leading axis, train state is replicated, and each process feeds only its
own rows (`global_batch`). On CPU the cores are used as host devices: `use_cpu_cores_as_devices` must be
called before JAX initialises its backends (the CLIs do it first thing).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def use_cpu_cores_as_devices(count: int | None = None) -> None:
    """Adds the host-device-count XLA flag (one device per core) unless the user already set it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _DEVICE_COUNT_FLAG in flags:
        return
    count = count or os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_COUNT_FLAG}={count}".strip()


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when launched as one of several processes (env or cluster)."""
    env_keys = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_ID")
    if any(k in os.environ for k in env_keys) and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Turns this process's rows into global arrays sharded over the data axis."""
    sharding = data_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {mesh.size} devices of the mesh")
