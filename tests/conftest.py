"""Test setup before JAX starts: four forced CPU host devices (so sharding is exercised), fast compiles."""

import os

# Test nets are tiny, so XLA's compile time dominates every test: the two cheapest-compile flags cut a
# BTSegDiff + U-Net overfitting test from 211 s to 143 s, and the CPU's older loop emitters for fusions
# compile a MedSegDiff-V2 smoke gradient in ~4 s instead of ~8 s (same machine, back to back). Equivalence
# tests compare two programs compiled under the same flags.
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_COMPILE_FLAGS}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import fcntl  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# Generated phantom data and slice caches go to one throwaway folder per test session (subprocesses
# inherit it), never to the user's cache.
os.environ.setdefault("DIFFSEG_CACHE", tempfile.mkdtemp(prefix="diffseg-test-cache-"))

# A persistent compilation cache per xdist worker, shared with the CLI runs that worker starts (they inherit
# JAX_COMPILATION_CACHE_DIR): a smoke program that several tests (or a test and its subprocess) compile
# identically is compiled once. Not shared between workers: JAX writes cache entries in place, so a process
# could read another's half-written entry.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(pathlib.Path(os.environ["DIFFSEG_CACHE"]) / f"xla-{_WORKER}")

from diffseg_jax import runtime  # noqa: E402

runtime.enable_compilation_cache()

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(script: str, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python <script> <args>` from the repository root; with `check`, a failure shows its stderr."""
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def trained_run(testrun_uid):
    """`trained_run(name, *run_train_args)` -> the workdir of one smoke training run through run_train.py.

    Trained once per test run and shared by every test and both xdist workers (a file lock in a folder of
    this test run's own, so nothing is reused from an earlier run; the second asker waits, then reuses it).
    Tests read it; evaluations write to their own `--config.eval.output_dir`.
    """
    root = pathlib.Path(os.environ["DIFFSEG_CACHE"]) / f"test-runs-{testrun_uid}"
    root.mkdir(parents=True, exist_ok=True)

    def get(name: str, *args: str) -> pathlib.Path:
        workdir = root / name
        done = workdir / "run_train.log"
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                shutil.rmtree(workdir, ignore_errors=True)
                result = run_cli("run_train.py", *args, f"--workdir={workdir}")
                done.write_text(result.stderr)
        return workdir

    return get


# Each xdist worker starts by training one of the shared runs, so that neither waits idle on the other's
# lock later (a worker blocked on the lock leaves its core unused).
_FIRST_RUN = {
    "gw0": ("btsegdiff-smoke", "--config=configs/btsegdiff.py:smoke"),
    "gw1": ("m2dn-smoke", "--config=configs/m2dn.py:smoke"),
}


@pytest.fixture(scope="session", autouse=True)
def _shared_runs_trained_first(request, trained_run):
    if _WORKER in _FIRST_RUN and any("trained_run" in item.fixturenames for item in request.session.items):
        trained_run(*_FIRST_RUN[_WORKER])


@pytest.fixture(scope="session")
def cli():
    """`cli(script, *args, check=True)`: run_train.py / run_eval.py in a subprocess (`run_cli`)."""
    return run_cli


def require_real_data(path: pathlib.Path) -> None:
    """Skips the calling test, saying why, when the real scans at `path` are absent; a skip fails the test
    run (`pytest_sessionfinish`) unless DIFFSEG_ALLOW_SKIPS=1, so a missing folder never passes as green."""
    if not path.exists():
        pytest.skip(f"real data not available at {path}")


def pytest_sessionfinish(session, exitstatus):
    """Any skipped test fails the run: a green run has run everything (DIFFSEG_ALLOW_SKIPS=1 allows them)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("DIFFSEG_ALLOW_SKIPS") == "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(
            f"FAILED: {len(skipped)} test(s) skipped (reasons in the short summary); a green run runs every "
            "test (the real scans belong in ../shared/real; DIFFSEG_ALLOW_SKIPS=1 accepts skips)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
