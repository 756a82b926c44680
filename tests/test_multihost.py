"""Multi-host training on localhost: 2 processes x 2 CPU devices (gloo) == 1 process x 4 devices.

The two-process run stops after 2 steps and resumes to 4 (checkpoint written once, restored by every
process); the reference runs 4 steps straight on one process. Same global batches, same parameters.
"""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from configs import unet_baseline
from data_pipelines import sources
from diffseg_jax import parallel
from diffseg_jax.checkpoint import Checkpoints
from diffseg_jax.methods.registry import build_method
from diffseg_jax.runtime import DEVICE_COUNT_FLAG
from diffseg_jax.stop_signal import EXIT_STOPPED
from diffseg_jax.train import train_and_evaluate
from diffseg_jax.train_state import create_train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4
ARGS = [
    "--config=configs/unet_baseline.py:smoke",  # the smallest compile: this tests the plumbing
    f"--config.train.steps={STEPS}",
    "--config.train.eval_every=0",
    f"--config.train.checkpoint_every={STEPS}",
    # SGD: updates proportional to the gradients, so float reduction-order differences stay at rounding
    # level (Adam's first steps are ~lr * sign(g) and flip on near-zero gradients).
    "--config.train.optimizer=sgd",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path, **extra: str) -> dict[str, str]:
    """`cache`: this process id's own compilation cache (two processes compiling at once must not share cache
    files; the resumed run's process of the same id reads what the first run compiled)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*kept, f"{DEVICE_COUNT_FLAG}={devices}"])
    env.update(extra)
    return env


def _train(
    workdir: pathlib.Path,
    processes: int,
    devices: int,
    *extra_args: str,
    timeout: float = 600,
    expect: int = 0,
) -> None:
    """Runs run_train.py as `processes` processes of `devices` CPU devices each; waits for all.

    Output goes to files (a full pipe cannot stall a process). When one process fails the others, which
    would wait for it in a collective, are killed at once; every process is killed on a timeout or any
    other error, so none outlives the test.
    """
    port = _free_port()
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{workdir.name}-logs-", dir=workdir.parent))
    procs: list[subprocess.Popen] = []
    logs: list[pathlib.Path] = []
    try:
        for pid in range(processes):
            env = _env(devices, workdir.parent / f"xla-{workdir.name}-process{pid}")
            if processes > 1:
                env.update(
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(processes),
                    JAX_PROCESS_ID=str(pid),
                )
            cmd = [sys.executable, str(ROOT / "run_train.py"), *ARGS, f"--workdir={workdir}", *extra_args]
            logs.append(log_dir / f"process{pid}.log")
            with logs[-1].open("w") as log:  # the child keeps its own handle
                procs.append(
                    subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
                )
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]  # every process polled (no short-circuit)
            done = all(c == expect for c in codes)
            if done or any(c not in (None, expect) for c in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    errors = [
        f"process {pid}: exit code {proc.returncode}\n{logs[pid].read_text(errors='replace')[-3000:]}"
        for pid, proc in enumerate(procs)
        if proc.returncode != expect
    ]
    assert not errors, f"run_train.py failed or timed out ({timeout:.0f} s):\n\n" + "\n\n".join(errors)


def _params(workdir: pathlib.Path, step: int):
    """The checkpoint's params, restored onto this (test) process's devices."""
    mesh = parallel.make_mesh()
    target = jax.eval_shape(_initial_state)
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), target
    )
    manager = Checkpoints(workdir / "checkpoints", max_to_keep=None)
    try:
        return manager.restore(step, target).params
    finally:
        manager.close()


def test_two_processes_equal_one_process(tmp_path):
    sources.load_splits(unet_baseline.get_config("smoke"), progress=False)  # data written once, up front
    multi, single = tmp_path / "multi", tmp_path / "single"
    _train(multi, 2, 2, "--config.train.stop_after=2", expect=EXIT_STOPPED)  # stopped early, resumable
    assert (multi / "checkpoints" / "2").is_dir() and not (multi / "checkpoints" / str(STEPS)).exists()
    _train(multi, 2, 2)  # both processes restore step 2 and go on
    config = unet_baseline.get_config("smoke")  # ARGS, in this process (4 CPU devices, as the conftest sets)
    config.train.update(steps=STEPS, eval_every=0, checkpoint_every=STEPS, optimizer="sgd")
    train_and_evaluate(config, single, progress=False)

    got, want = _flat(_params(multi, STEPS)), _flat(_params(single, STEPS))
    assert got.keys() == want.keys() and len(got) > 50
    init = _flat(_initial_state().params)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    moved = [name for name in want if not np.array_equal(want[name], init[name])]
    assert len(moved) > len(want) // 2, "training must have changed the parameters"


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _initial_state():
    config = unet_baseline.get_config("smoke")
    config.train.optimizer = "sgd"
    size = config.data.image_size
    sample = {
        "image": np.zeros((1, size, size, 4), np.float32),
        "label": np.zeros((1, size, size, 3), np.float32),
    }
    return create_train_state(config, build_method(config), sample)
