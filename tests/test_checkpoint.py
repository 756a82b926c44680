"""Checkpoints: what `restore_params` returns for 'best' and 'latest', what the best manager keeps."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet_baseline
from data_pipelines import sources
from diffseg_jax import parallel
from diffseg_jax.checkpoint import Checkpoints, init_from, restore_params
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.registry import build_method
from diffseg_jax.train_state import TrainState, create_train_state

METRIC = "val/dice"


@pytest.fixture(scope="module")
def smoke():
    config = unet_baseline.get_config("smoke")
    method = build_method(config)
    example = sources.example_slices(config)
    return config, method, example, create_train_state(config, method, example)


def _filled(state: TrainState, value: float, step: int) -> TrainState:
    """`state` at `step` with every EMA parameter = value and every raw parameter = -value."""
    return state.replace(
        step=jnp.asarray(step, jnp.int32),
        params=jax.tree.map(lambda p: jnp.full_like(p, -value), state.params),
        ema_params=jax.tree.map(lambda p: jnp.full_like(p, value), state.params),
    )


def _write_run(workdir: pathlib.Path, state: TrainState, with_best: bool = True) -> None:
    """What a run leaves: checkpoints/ {3: 1.0, 6: 2.0}; best/ kept step 3 (score 0.9) over 5 (0.4)."""
    latest = Checkpoints(workdir / "checkpoints", max_to_keep=2)
    latest.save(3, _filled(state, 1.0, 3))
    latest.save(6, _filled(state, 2.0, 6))
    latest.close()
    if with_best:
        best = Checkpoints(workdir / "best", max_to_keep=1, best_metric=METRIC, best_mode="max")
        best.save(3, _filled(state, 1.0, 3), metrics={METRIC: 0.9})
        best.save(5, _filled(state, 3.0, 5), metrics={METRIC: 0.4})  # newer but worse: not kept
        best.close()


def _restore(smoke, workdir: pathlib.Path, which: str) -> tuple[float, int]:
    """(the single value every restored EMA parameter has, the step) of restore_params(`which`)."""
    config, method, example, _ = smoke
    config = config.copy_and_resolve_references()
    config.eval.checkpoint = which
    params, step = restore_params(config, workdir, method, parallel.make_mesh(), example)
    leaves = [np.asarray(p) for p in jax.tree.leaves(params)]
    assert jax.tree.structure(params) == jax.tree.structure(smoke[3].ema_params)
    values = np.unique(np.concatenate([leaf.ravel() for leaf in leaves]))
    assert values.size == 1, f"restored parameters mix values {values[:5]}"
    return float(values[0]), step


def test_best_returns_the_best_scored_checkpoint_and_latest_the_newest(smoke, tmp_path):
    _write_run(tmp_path, smoke[3])
    assert _restore(smoke, tmp_path, "best") == (1.0, 3)
    assert _restore(smoke, tmp_path, "latest") == (2.0, 6)


@pytest.mark.parametrize("best_folder", ["absent", "empty"])
def test_best_falls_back_to_latest_without_a_best_checkpoint(smoke, tmp_path, best_folder):
    _write_run(tmp_path, smoke[3], with_best=False)
    if best_folder == "empty":
        (tmp_path / "best").mkdir()
    assert _restore(smoke, tmp_path, "best") == (2.0, 6)


def test_no_checkpoint_names_the_workdir(smoke, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        _restore(smoke, tmp_path, "best")


@pytest.mark.parametrize(("mode", "kept"), [("max", 2), ("min", 1)])
def test_best_manager_keeps_the_best_score_by_mode(tmp_path, mode, kept):
    scores = {1: 0.5, 2: 0.8, 3: 0.6}  # the best is neither the first nor the last saved
    manager = Checkpoints(tmp_path, max_to_keep=1, best_metric="score", best_mode=mode)
    for step, score in scores.items():
        manager.save(step, {"x": np.full(3, float(step), np.float32)}, metrics={"score": score})
    assert manager.best_step() == kept
    manager.close()
    # As restore_params sees the folder: a fresh manager, without the metric.
    reopened = Checkpoints(tmp_path, max_to_keep=None)
    assert reopened.latest_step() == kept
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [kept]
    restored = reopened.restore(kept, {"x": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(restored["x"], np.full(3, float(kept)))
    reopened.close()


def test_best_manager_needs_metrics(tmp_path):
    manager = Checkpoints(tmp_path, max_to_keep=1, best_metric="score")
    with pytest.raises(ValueError, match="metrics"):
        manager.save(1, {"x": np.zeros(2, np.float32)})
    manager.close()


def test_init_from_takes_the_best_parameters_and_a_fresh_optimiser(smoke, tmp_path):
    config, method, example, state = smoke
    _write_run(tmp_path, state)
    moved = state.replace(
        opt_state=jax.tree.map(lambda x: x + 1 if x.dtype.kind == "f" else x, state.opt_state)
    )
    started = init_from(moved, tmp_path, parallel.make_mesh())
    for tree in (started.params, started.ema_params):  # best/ kept step 3, whose EMA weights are all 1.0
        assert {float(v) for leaf in jax.tree.leaves(tree) for v in np.unique(leaf)} == {1.0}
    assert int(started.step) == 0
    for a, b in zip(jax.tree.leaves(started.params), jax.tree.leaves(started.ema_params), strict=True):
        pointer = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()  # noqa: E731
        assert pointer(a) != pointer(b)  # the train step donates both
    for a, b in zip(jax.tree.leaves(started.opt_state), jax.tree.leaves(moved.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)  # the optimiser is the one given, not the source run's


def test_init_from_a_different_network_is_one_line(smoke, tmp_path):
    config, method, example, state = smoke
    _write_run(tmp_path, state)
    wider = config.copy_and_resolve_references()
    wider.model.base_features = 2 * config.model.base_features
    other = create_train_state(wider, build_method(wider), example)
    with pytest.raises(ConfigError, match=r"a different network — parameter .* is shape \(.*\) there, shape"):
        init_from(other, tmp_path, parallel.make_mesh())
    with pytest.raises(ConfigError, match="no checkpoint there"):
        init_from(state, tmp_path / "nowhere", parallel.make_mesh())
