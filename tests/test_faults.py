"""Faults a run survives: a stop during validation, two runs on one workdir, a damaged checkpoint."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import logging
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import unet_baseline
from data_pipelines import sources
from diffseg_jax import outputs, parallel, stop_signal, train, workdir_lock
from diffseg_jax.checkpoint import CheckpointError, Checkpoints, restore_params
from diffseg_jax.methods.registry import build_method
from diffseg_jax.tasks import anomaly, segmentation, synthesis
from diffseg_jax.train import _resume, train_and_evaluate
from diffseg_jax.train_state import create_train_state
from tests.conftest import ROOT

KILL_RUN_STEPS = 40  # checkpoints every 10: after any one seen, a later one comes before the end
KILL_RUN = [
    f"--config.train.steps={KILL_RUN_STEPS}",
    "--config.train.checkpoint_every=10",
    "--config.train.eval_every=0",
]


def _smoke(**train):
    config = unet_baseline.get_config("smoke")
    for key, value in train.items():
        config.train[key] = value
    return config


def test_a_second_run_on_a_busy_workdir_stops_at_once_naming_the_holder(tmp_path):
    with workdir_lock.hold(tmp_path):
        with pytest.raises(workdir_lock.WorkdirBusy) as err:
            train_and_evaluate(_smoke(steps=2), tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message and f"pid {os.getpid()}" in message and "since" in message
    with workdir_lock.hold(tmp_path):  # released with its holder: the next run goes ahead
        pass


def test_a_second_evaluation_into_a_busy_output_folder_stops_at_once(tmp_path):
    from diffseg_jax import tasks

    config = _smoke()
    config.eval.output_dir = str(tmp_path / "eval")
    with workdir_lock.hold(tmp_path / "eval", "run_eval"):
        with pytest.raises(workdir_lock.WorkdirBusy, match="one evaluation per output folder") as err:
            tasks.evaluate(config, tmp_path / "no-run-here", progress=False)
    assert f"pid {os.getpid()}" in str(err.value) and "run_eval" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [".lock"]  # nothing else written


@pytest.fixture()
def saved_run(tmp_path):
    """checkpoints/ with steps 3 and 6 (EMA parameters all 3.0 and 6.0) and best/ with step 6."""
    config = _smoke()
    method = build_method(config)
    state = create_train_state(config, method, sources.example_slices(config))
    for folder, steps in (("checkpoints", (3, 6)), ("best", (6,))):
        manager = Checkpoints(tmp_path / folder, max_to_keep=None)
        for step in steps:
            filled = jax.tree.map(lambda p, s=step: np.full_like(p, float(s)), state.ema_params)
            manager.save(step, state.replace(step=np.int32(step), ema_params=filled))
        manager.close()
    return config, method, state, tmp_path


def _damage(step_dir):
    """Overwrites every data file of a checkpoint, as a disk error or a half-copied folder would."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for path in files:
        path.write_bytes(b"\x00garbage" * 8)
    assert files


def test_resume_skips_a_damaged_newest_checkpoint(saved_run, caplog):
    config, method, state, workdir = saved_run
    _damage(workdir / "checkpoints" / "6")
    latest = Checkpoints(workdir / "checkpoints", max_to_keep=None)
    with caplog.at_level(logging.WARNING):
        resumed = _resume(latest, state)
    assert int(resumed.step) == 3
    assert {float(v) for leaf in jax.tree.leaves(resumed.ema_params) for v in np.unique(leaf)} == {3.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # errors too
    assert len(warnings) == 1 and "checkpoints/6 is unreadable, skipped" in warnings[0]
    assert (workdir / "checkpoints" / "6.unreadable").is_dir() and latest.all_steps() == [3]
    _damage(workdir / "checkpoints" / "3")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint among steps \[3\]"):
        _resume(Checkpoints(workdir / "checkpoints", max_to_keep=None), state)


def test_eval_on_a_damaged_best_checkpoint_is_one_line(saved_run):
    config, method, state, workdir = saved_run
    _damage(workdir / "best" / "6")
    example = sources.example_slices(config)
    with pytest.raises(CheckpointError) as err:
        restore_params(config, workdir, method, parallel.make_mesh(), example)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{workdir / 'best' / '6'}: unreadable")
    assert "eval.checkpoint=latest" in message
    latest = config.copy_and_resolve_references()
    latest.eval.checkpoint = "latest"
    _, step = restore_params(latest, workdir, method, parallel.make_mesh(), example)
    assert step == 6


def test_a_stopped_evaluation_resumes_without_redoing_finished_cases(tmp_path, monkeypatch):
    config = _smoke(steps=1, eval_every=0)  # the U-Net: the cheapest network to evaluate
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir, progress=False)
    config.eval.split, config.eval.max_cases = "train", 2  # the smoke test split has one case
    config.eval.output_dir = str(tmp_path / "eval")
    segmented: list[str] = []
    original = segmentation.segment_volume

    def segment_then_sigterm(predict_fn, params, volume, *args, **kwargs):
        segmented.append(volume.case_id)
        if len(segmented) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the first case is segmented
        return original(predict_fn, params, volume, *args, **kwargs)

    monkeypatch.setattr(segmentation, "segment_volume", segment_then_sigterm)
    with pytest.raises(stop_signal.Stopped, match="evaluation stopped after 1 of 2 cases"):
        segmentation.evaluate(config, workdir, progress=False)
    assert not (tmp_path / "eval" / "metrics.json").exists()  # no table of a partial evaluation
    first = segmented[0]
    summary = segmentation.evaluate(config, workdir, progress=False)
    assert len(segmented) == 2 and segmented[1] != first  # the finished case was not redone
    assert summary["num_cases"] == 2
    rows = (tmp_path / "eval" / "per_case.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith(first)


def test_a_stopped_anomaly_evaluation_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    config = importlib.import_module("configs.anomaly_dae").get_config("smoke")
    config.train.steps, config.eval.num_overlays = 2, 0
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir, progress=False)
    config.eval.output_dir = str(tmp_path / "uninterrupted")
    uninterrupted = anomaly.evaluate(config, workdir, progress=False)
    config.eval.output_dir = str(tmp_path / "eval")
    original = anomaly.reconstruct_volume
    done: list[str] = []

    def reconstruct_then_sigterm(predict, volume, k):
        done.append(volume.case_id)
        if volume.case_id == uninterrupted_first_test_case:
            os.kill(os.getpid(), signal.SIGTERM)  # during the first test case, after the threshold
        return original(predict, volume, k)

    rows = (tmp_path / "uninterrupted" / "per_case.csv").read_text().splitlines()
    uninterrupted_first_test_case = rows[1].split(",")[0]
    monkeypatch.setattr(anomaly, "reconstruct_volume", reconstruct_then_sigterm)
    with pytest.raises(stop_signal.Stopped, match="evaluation stopped after 2 of"):
        anomaly.evaluate(config, workdir, progress=False)
    assert not (tmp_path / "eval" / "metrics.json").exists()
    before = len(done)
    resumed = anomaly.evaluate(config, workdir, progress=False)
    # The smoke preset scores t2 only: neither the threshold nor the first case is redone, the rest once each.
    assert done[before:] == [row.split(",")[0] for row in rows[2:]]
    resumed.pop("seconds_per_case"), uninterrupted.pop("seconds_per_case")
    assert resumed == uninterrupted
    stats = resumed["sequences"]["t2"]
    assert resumed["method"] == "dae" and all(
        math.isfinite(stats[m]["mean"]) for m in ("dsc", "auprc", "ssim")
    )
    assert (tmp_path / "eval" / "per_case.csv").read_text().splitlines() == rows


def test_a_stopped_synthesis_evaluation_resumes_case_by_case(trained_run, tmp_path, monkeypatch):
    workdir = trained_run("m2dn-smoke", "--config=configs/m2dn.py:smoke")
    config = importlib.import_module("configs.m2dn").get_config("smoke")
    config.eval.split, config.eval.max_cases = "train", 2
    config.eval.output_dir = str(tmp_path / "eval")
    original = synthesis._synthesise_case
    done: list[str] = []

    def synthesise_then_sigterm(case, *args):
        done.append(case.case_id)
        if len(done) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(case, *args)

    monkeypatch.setattr(synthesis, "_synthesise_case", synthesise_then_sigterm)
    with pytest.raises(stop_signal.Stopped, match="evaluation stopped after 1 of 2 cases"):
        synthesis.evaluate(config, workdir, progress=False)
    assert not (tmp_path / "eval" / "metrics.json").exists()
    summary = synthesis.evaluate(config, workdir, progress=False)
    assert len(done) == 2 and done[1] != done[0] and summary["num_cases"] == 2
    rows = (tmp_path / "eval" / "per_case.csv").read_text().splitlines()
    assert rows[1].startswith(done[0]) and rows[-1].startswith(done[1])


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_previous_output_whole_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "eval" / "metrics.json"
    outputs.write_json(path, {"dice": 0.9})
    monkeypatch.setattr(pathlib.Path, "write_text", _no_space)
    with pytest.raises(OSError) as err:
        outputs.write_json(path, {"dice": 0.1})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"dice": 0.9}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary left behind


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(saved_run, monkeypatch):
    config, method, state, workdir = saved_run
    latest = Checkpoints(workdir / "checkpoints", max_to_keep=None)
    monkeypatch.setattr(latest._manager, "save", _no_space)
    with pytest.raises(OSError) as err:
        latest.save(9, state)
    assert err.value.filename == str(workdir / "checkpoints" / "9")
    monkeypatch.undo()
    assert int(_resume(Checkpoints(workdir / "checkpoints", max_to_keep=None), state).step) == 6


def test_a_full_disk_after_the_temporary_folder_exists_keeps_the_previous_checkpoint(saved_run, monkeypatch):
    """ENOSPC once orbax has written the step into its temporary folder (at the rename that commits it)."""
    from orbax.checkpoint._src.path import atomicity

    config, method, state, workdir = saved_run
    latest = Checkpoints(workdir / "checkpoints", max_to_keep=None)

    async def full_disk(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full_disk)
    with pytest.raises(OSError) as err:
        latest.save(9, state)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(workdir / "checkpoints" / "9")
    left = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("9")]
    assert left and all("tmp" in name for name in left)  # the fault came after the temporary folder
    resumed = Checkpoints(workdir / "checkpoints", max_to_keep=None, cleanup_tmp=True)
    assert resumed.all_steps() == [3, 6] and int(_resume(resumed, state).step) == 6
    assert not any(p.name.startswith("9") for p in (workdir / "checkpoints").iterdir())  # cleaned up


class _Abort(BaseException):
    """Stands for `kill -9`: the run ends at once, nothing after this point runs (no save, no cleanup)."""


def test_interrupted_and_resumed_equals_uninterrupted_bitwise(tmp_path, monkeypatch):
    """SIGTERM inside a step, during validation and during a save, and hard aborts inside a step and during
    a save, each resumed: the end state equals an uninterrupted run's bit for bit."""
    config = _smoke(steps=10, checkpoint_every=2, eval_every=3)
    clean = jax.device_get(train_and_evaluate(config, tmp_path / "clean", progress=False))
    workdir = tmp_path / "interrupted"
    original_step = train.make_train_step
    original_save = Checkpoints.save
    original_validation = segmentation.TASK.validation_scores

    def fault_in_step(at: int, fault):
        def make(*args):
            step_fn = original_step(*args)

            def step(state, batch):
                out = step_fn(state, batch)
                if int(out[0].step) == at:
                    fault()
                return out

            return step

        monkeypatch.setattr(train, "make_train_step", make)

    def fault_in_save(at: int, fault):
        def save(self, step, state, metrics=None):
            if step == at and self.directory.name == "checkpoints":
                fault()
            return original_save(self, step, state, metrics)

        monkeypatch.setattr(Checkpoints, "save", save)

    def fault_in_validation(fault):
        def scores(*args):
            fault()
            return original_validation(*args)

        patched = dataclasses.replace(segmentation.TASK, validation_scores=scores)
        monkeypatch.setattr(segmentation, "TASK", patched)

    def sigterm():
        os.kill(os.getpid(), signal.SIGTERM)

    def abort():
        raise _Abort

    def abort_mid_save():  # what `kill -9` during orbax's save leaves: a half-written temporary folder
        partial = workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1796230000"
        partial.mkdir(parents=True)
        (partial / "_CHECKPOINT_METADATA").write_text("{")
        raise _Abort

    def run(setup):
        monkeypatch.undo()
        setup()
        try:
            return train_and_evaluate(config, workdir, progress=False)
        except _Abort:
            return None

    def saved() -> list[int]:
        return Checkpoints(workdir / "checkpoints", max_to_keep=None).all_steps()

    assert int(run(lambda: fault_in_step(1, sigterm)).step) == 1 and saved() == [1]  # inside a step
    # During validation at step 3, not a checkpoint step: step 3 is saved all the same.
    assert int(run(lambda: fault_in_validation(sigterm)).step) == 3 and saved()[-1] == 3
    assert run(lambda: fault_in_step(5, abort)) is None and saved()[-1] == 4  # hard abort inside step 5
    assert int(run(lambda: fault_in_save(6, sigterm)).step) == 6 and saved()[-1] == 6  # the save completes
    assert run(lambda: fault_in_save(8, abort_mid_save)) is None and saved()[-1] == 6  # hard abort mid-save
    resumed = jax.device_get(run(lambda: None))
    assert not list((workdir / "checkpoints").glob("*tmp*"))  # the half-written save was cleaned up
    for field in ("params", "ema_params", "opt_state", "rng", "step"):
        got = jax.tree_util.tree_flatten_with_path(getattr(resumed, field))[0]
        want = jax.tree_util.tree_flatten_with_path(getattr(clean, field))[0]
        assert [p for p, _ in got] == [p for p, _ in want]
        for (path, a), (_, b) in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{field}{jax.tree_util.keystr(path)}")


def _saved_steps(workdir: pathlib.Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_9_and_a_second_run_through_the_cli(cli, tmp_path):
    """A second run_train.py on a busy workdir stops within seconds naming the first, which goes on; then a
    real `kill -9`; resumed, the killed run ends equal to an uninterrupted one bit for bit."""
    args = ["--config=configs/unet_baseline.py:smoke", *KILL_RUN]
    config = _smoke(steps=KILL_RUN_STEPS, checkpoint_every=10, eval_every=0)
    train_and_evaluate(config, tmp_path / "clean", progress=False)  # the CLI's XLA flags are these too
    workdir = tmp_path / "killed"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [sys.executable, "run_train.py", *args, f"--workdir={workdir}"], cwd=ROOT, stdout=log, stderr=log
    )
    try:
        _wait_for(lambda: bool(_saved_steps(workdir)), "the first checkpoint")
        first.send_signal(signal.SIGSTOP)  # holds it mid-run (lock and all) while the second run tries
        reached = _saved_steps(workdir)[-1]
        tic = time.monotonic()
        second = cli("run_train.py", *args, f"--workdir={workdir}", check=False)
        assert time.monotonic() - tic < 60 and second.returncode == 1
        last_line = second.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and f"pid {first.pid}" in last_line
        first.send_signal(signal.SIGCONT)  # unharmed: it goes on and saves again
        _wait_for(lambda: _saved_steps(workdir)[-1] > reached, "a checkpoint after the second run")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL and _saved_steps(workdir)[-1] < KILL_RUN_STEPS
    cli("run_train.py", *args, f"--workdir={workdir}")  # resumes from the newest complete checkpoint

    template = create_train_state(config, build_method(config), sources.example_slices(config))
    got, want = (
        _resume(Checkpoints(folder / "checkpoints", max_to_keep=None), template)
        for folder in (workdir, tmp_path / "clean")
    )
    assert int(got.step) == int(want.step) == KILL_RUN_STEPS
    for field in ("params", "ema_params", "opt_state"):
        for a, b in zip(
            jax.tree.leaves(getattr(got, field)), jax.tree.leaves(getattr(want, field)), strict=True
        ):
            np.testing.assert_array_equal(a, b, err_msg=field)


def test_a_second_ctrl_c_interrupts_at_once_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with stop_signal.StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)  # the first: a request, work goes on
            reached.append(stop.requested)
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
            reached.append("not interrupted")
    assert reached == [True]
    assert signal.getsignal(signal.SIGINT) is before
