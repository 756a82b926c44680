"""Devices, mesh and shardings: one data axis over every device of every process.

Batches are sharded on their leading axis, train state is replicated, and each process feeds only its
own rows (`global_batch`). Multi-process runs start with `maybe_initialize_distributed` (the CLIs call
it); on CPU their collectives go through gloo.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffseg_jax.runtime import env_int

DATA_AXIS = "data"
# Set by the user (or a launcher) to run one of several processes; cluster environments (SLURM, Cloud
# TPU, Open MPI, ...) are recognised by jax.distributed.initialize itself.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_CLUSTER_KEYS = ("SLURM_NTASKS", "TPU_WORKER_ID", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(environ=None) -> bool:
    """jax.distributed.initialize() when launched as one of several processes; True if it did.

    Plain launches give JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID per process (README, "Backends, precision, multi-host"). On CPU the collectives use gloo.
    """
    env = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return True
    if ENV_COORDINATOR in env:
        if env.get("JAX_PLATFORMS", "cpu") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=env[ENV_COORDINATOR],
            num_processes=env_int(env, ENV_NUM_PROCESSES) if ENV_NUM_PROCESSES in env else None,
            process_id=env_int(env, ENV_PROCESS_ID) if ENV_PROCESS_ID in env else None,
        )
        return True
    if any(k in env for k in _CLUSTER_KEYS):
        jax.distributed.initialize()
        return True
    return False


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
