"""The train step and loop: sharding equivalence, learning, divergence, SIGTERM through the CLI."""

import functools
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import btsegdiff as btsegdiff_config
from configs import medsegdiff_v1 as v1_config
from configs import medsegdiff_v2 as v2_config
from configs import unet_baseline as unet_config
from data_pipelines import input_pipeline, sources
from diffseg_jax import parallel
from diffseg_jax.checkpoint import Checkpoints
from diffseg_jax.methods.registry import build_method
from diffseg_jax.stop_signal import EXIT_STOPPED
from diffseg_jax.tasks import segmentation
from diffseg_jax.train import TrainingDiverged, make_train_step, train_and_evaluate
from diffseg_jax.train_state import create_train_state, learning_rate_schedule

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_batch(size=16, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, size, size, 4)).astype(np.float32)
    label = np.zeros((batch, size, size, 3), np.float32)
    label[:, 4:10, 5:11, 0] = 1.0  # a "tumour" that is also visible in the image
    label[:, 6:9, 7:10, 1:] = 1.0
    image[..., 3] += 3.0 * label[..., 0]
    return {"image": image, "label": label}


def _smoke(config_module, **overrides):
    config = config_module.get_config("smoke")
    config.data.image_size = 16
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def _run_steps(config, mesh, batch, steps):
    """The state after `steps` train steps on `mesh` (on the host): params, EMA, optimiser state, step."""
    method = build_method(config)
    state = jax.device_put(create_train_state(config, method, batch), parallel.replicated(mesh))
    step_fn = make_train_step(method, config, mesh)
    for _ in range(steps):
        state, _ = step_fn(state, parallel.global_batch(mesh, batch))
    return jax.device_get(state)


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_close(got, want, rtol, atol, what):
    got, want = _flat(got), _flat(want)
    assert got.keys() == want.keys(), what
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=f"{what}{name}")


def _all_finite(tree) -> bool:
    return all(np.isfinite(v).all() for v in _flat(tree).values() if np.issubdtype(v.dtype, np.inexact))


def test_learning_rate_warms_up_then_decays_to_five_percent_and_never_exceeds_the_peak():
    # Guards the end value: optax takes an absolute end value, so passing the 5 % fraction itself (0.05)
    # would make the "decay" rise far above the peak learning rate.
    config = btsegdiff_config.get_config("")
    schedule = learning_rate_schedule(config)
    peak, steps = config.train.learning_rate, config.train.steps
    values = np.array([float(schedule(s)) for s in range(0, steps + 1, 10)])
    assert values.max() == pytest.approx(peak, rel=1e-6)
    assert float(schedule(config.train.warmup_steps)) == pytest.approx(peak, rel=1e-6)
    assert float(schedule(steps)) == pytest.approx(0.05 * peak, rel=1e-4)
    after = values[values.argmax() :]
    assert np.all(np.diff(after) <= 1e-12)


def test_sharded_step_on_four_devices_equals_single_device():
    assert jax.device_count() == 4, "conftest forces 4 host devices"
    # SGD: Adam's g / sqrt(v) turns float rounding in near-zero gradients into full-size updates.
    config = _smoke(btsegdiff_config, train__optimizer="sgd", train__learning_rate=0.05)
    batch = _tiny_batch()
    sharded = _run_steps(config, parallel.make_mesh(), batch, 2)
    single = _run_steps(config, parallel.make_mesh(jax.devices()[:1]), batch, 2)
    _assert_trees_close(sharded.params, single.params, 1e-4, 1e-6, "params")


def test_sharded_adamw_step_on_four_devices_equals_single_device(monkeypatch):
    """The default optimiser (AdamW, clipped, scheduled) sharded over 4 devices == on one device.

    Adam's first update is lr * g / (|g| + eps), whose derivative in g is up to lr / eps: a rounding
    difference d in a gradient (the 4-device mean sums in another order) moves the update by up to
    lr * d / eps. With optax's eps = 1e-8 that is a full-size, sign-flipping update wherever a gradient
    is at rounding level (e.g. a conv bias followed by a normalisation, whose true gradient is 0):
    measured, sharded and single-device params then differ by up to 0.8 lr. eps = 1e-3 bounds it by
    lr * 1e3 * d: params, EMA and Adam's moments then agree to within 1e-6 of each tree's largest
    magnitude, while stepping on one shard's gradient instead of the mean moves most elements by ~1e-3
    of it; the tolerance, 1e-5 of the largest magnitude, lies between. The rest of make_optimizer
    (clipping, weight decay, schedule) is kept. The U-Net: the cheapest compile; the diffusion methods'
    sharding is covered by the SGD test above.
    """
    assert jax.device_count() == 4, "conftest forces 4 host devices"
    monkeypatch.setattr(optax, "adamw", functools.partial(optax.adamw, eps=1e-3))
    config = _smoke(unet_config, train__learning_rate=1e-2, train__warmup_steps=0)
    assert config.train.optimizer == "adamw"
    batch = _tiny_batch()
    sharded = _run_steps(config, parallel.make_mesh(), batch, 2)
    single = _run_steps(config, parallel.make_mesh(jax.devices()[:1]), batch, 2)
    assert int(sharded.step) == int(single.step) == 2
    got, want = _adam_state(sharded), _adam_state(single)
    assert int(got.count) == int(want.count) == 2
    for name, a, b in [
        ("params", sharded.params, single.params),
        ("ema_params", sharded.ema_params, single.ema_params),
        ("adam mu", got.mu, want.mu),  # the (clipped) mean gradients
        ("adam nu", got.nu, want.nu),  # and their squares
    ]:
        scale = max(np.abs(v).max() for v in _flat(b).values())
        _assert_trees_close(a, b, 1e-4, 1e-5 * scale, name)
    init = _flat(create_train_state(config, build_method(config), batch).params)
    moved = [k for k, v in _flat(single.params).items() if np.abs(v - init[k]).max() > 1e-3]
    assert len(moved) > len(init) // 2, "the steps must move the parameters by more than the tolerance"


def _adam_state(state) -> optax.ScaleByAdamState:
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    (adam,) = [s for s in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
    return adam


@pytest.mark.parametrize("config_module", [btsegdiff_config, v1_config, v2_config, unet_config])
def test_loss_falls_when_overfitting_a_tiny_batch(config_module):
    config = _smoke(config_module, train__steps=60, train__learning_rate=3e-3)
    batch = _tiny_batch()
    method = build_method(config)
    mesh = parallel.make_mesh()
    state = jax.device_put(create_train_state(config, method, batch), parallel.replicated(mesh))
    keys = [jax.random.PRNGKey(100 + i) for i in range(8)]
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}

    loss = jax.jit(lambda params, key: method.loss(params, jbatch, key)[0])

    def mean_loss(params):  # same timesteps and noise before and after: a fair comparison
        return float(np.mean([loss(params, k) for k in keys]))

    predict = jax.jit(method.predict)

    def dice(params) -> float:  # the segmentation the evaluation would write, region by region
        prob = np.asarray(predict(params, jbatch["image"], jax.random.PRNGKey(7))["prob"])
        return float(segmentation.slice_dice(prob, batch["label"]).mean())

    before, dice_before = mean_loss(state.params), dice(state.params)
    step_fn = make_train_step(method, config, mesh)
    for _ in range(60):
        state, metrics = step_fn(state, parallel.global_batch(mesh, batch))
    after = mean_loss(state.params)
    assert after < 0.5 * before, (before, after)
    dice_after = dice(state.params)  # learnt: above a floor that the untrained net and all-background fail
    all_background = float(segmentation.slice_dice(np.zeros_like(batch["label"]), batch["label"]).mean())
    assert dice_after >= 0.7 > max(dice_before, all_background), (dice_before, dice_after)


def _unet_diverging(**train):
    config = unet_config.get_config("smoke")
    config.train.eval_every = 0
    config.train.update(train)
    return config


def _restore_state(config, workdir: pathlib.Path, step: int):
    """(the only checkpoint in workdir/checkpoints, which must be `step`; the initial state)."""
    initial = create_train_state(config, build_method(config), sources.example_slices(config))
    manager = Checkpoints(workdir / "checkpoints", max_to_keep=None)
    try:
        assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [step]
        return jax.device_get(manager.restore(step, initial)), initial
    finally:
        manager.close()


def _assert_finite_state(state):
    for field in ("params", "ema_params", "opt_state"):
        assert _all_finite(getattr(state, field)), f"{field} of the kept checkpoint is not finite"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # The third batch is NaN: steps 1 and 2 are good, the loss of the third step is NaN. No regular
    # checkpoint is due (checkpoint_every=1000), so step 2 is kept only if the loop saves it on divergence.
    config = _unet_diverging(checkpoint_every=1000)
    real_batches = input_pipeline.train_batches

    def nan_third_batch(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            yield {**batch, "image": np.full_like(batch["image"], np.nan)} if i == 2 else batch

    monkeypatch.setattr(input_pipeline, "train_batches", nan_third_batch)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3; .*\(step 2\)"):
        train_and_evaluate(config, tmp_path / "diverged", progress=False)
    monkeypatch.undo()
    kept, _ = _restore_state(config, tmp_path / "diverged", 2)
    _assert_finite_state(kept)
    # Exactly the state two clean steps give: nothing of the NaN step (params, EMA, optimiser, step).
    train_and_evaluate(config, tmp_path / "clean", progress=False, stop_after=2)
    clean, _ = _restore_state(config, tmp_path / "clean", 2)
    assert int(kept.step) == int(clean.step) == 2
    for field in ("params", "ema_params", "opt_state", "rng"):
        _assert_trees_close(getattr(kept, field), getattr(clean, field), 0, 0, field)


def test_diverging_cli_run_ends_with_one_error_line_and_a_finite_checkpoint(tmp_path, cli):
    # With lr = 1e38 (finite in float32) the first update puts the parameters at ~1e38: their squared
    # global norm overflows, so train_step rejects that update and the last good state is step 0.
    result = cli(
        "run_train.py",
        "--config=configs/unet_baseline.py:smoke",
        f"--workdir={tmp_path}",
        "--config.train.learning_rate=1e38",
        "--config.train.warmup_steps=0",
        "--config.train.checkpoint_every=1",
        "--config.train.eval_every=0",
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), result.stderr[-3000:]
    assert re.search(r"\bloss\b.* at step 1; .*\(step 0\)", last), last
    kept, initial = _restore_state(_unet_diverging(learning_rate=1e38, warmup_steps=0), tmp_path, 0)
    _assert_finite_state(kept)
    for field in ("params", "ema_params", "opt_state"):  # the rejected update left nothing behind
        _assert_trees_close(getattr(kept, field), getattr(initial, field), 0, 0, field)


def test_sigterm_saves_the_step_reached_and_exits_as_stopped(tmp_path):
    """A preempted run (SIGTERM mid-training) checkpoints the step it reached and exits cleanly."""
    args = [
        sys.executable,
        str(ROOT / "run_train.py"),
        "--config=configs/unet_baseline.py:smoke",  # the stop path is the same for every method
        f"--workdir={tmp_path}",
        "--config.train.steps=400",
        "--config.train.checkpoint_every=1000",  # no regular checkpoint: only the stop saves one
        "--config.train.eval_every=0",
        "--alsologtostderr",
    ]
    err_path = tmp_path / "first.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 600
        while True:  # tqdm's bar on stderr: "| k/400" with k >= 1 means the loop (and its handler) runs
            if re.search(r"\| *[1-9]\d*/400 ", err_path.read_text(errors="replace")):
                break
            assert proc.poll() is None, err_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "training did not start within 600 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err_path.read_text(errors="replace")
    # The handler only sets a flag: the loop saves after the current step and exits "stopped, resumable".
    assert code == EXIT_STOPPED, log[-3000:]
    assert "Traceback" not in log
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    reached = summary["final_step"]
    assert 1 <= reached < 400 and summary["steps_this_run"] == reached and summary["finished"] is False
    assert Checkpoints(tmp_path / "checkpoints").latest_step() == reached
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [str(reached)]
    assert f"stop requested: saved step {reached}" in log
    # Resumed from there, the run ends bit for bit as an uninterrupted one: tests/test_faults.py.
