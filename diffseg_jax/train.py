"""Training: one sharded jitted step, and the one loop for every task, with checkpoints and validation.

What differs between tasks (data, validation scores, the score that picks the best checkpoint) comes from
the task `config.task` names (`diffseg_jax/tasks/`); this loop has no branch on it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm.auto import tqdm

from data_pipelines import augmentation, input_pipeline
from diffseg_jax import (
    config_files,
    inference,
    modalities,
    parallel,
    run_config,
    tasks,
    tensorflow_import,
    workdir_lock,
)
from diffseg_jax.checkpoint import CheckpointError, Checkpoints, init_from, reason
from diffseg_jax.diffusion import importance
from diffseg_jax.methods.base import Method
from diffseg_jax.methods.registry import build_method
from diffseg_jax.stop_signal import StopRequest
from diffseg_jax.tasks.base import Task
from diffseg_jax.train_state import TrainState, create_train_state, ema_decay


class TrainingDiverged(RuntimeError):
    """A step was not finite (loss, gradients or updated parameters); the last good state is saved."""


def train_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    method: Method,
    ema_max_decay: float,
    sequence_dropout: float = 0.0,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimisation step; pure, so it can be jitted with shardings and donated state.

    `sequence_dropout` > 0: that fraction of examples sees a random non-empty subset of the sequences
    (missing ones zeroed, `modalities.py`), so the model learns to segment from any subset.

    A step whose loss or gradient norm is not finite, or whose updated parameters' global norm is not
    (a non-finite parameter, or parameters so large that the norm overflows), is not applied: the state
    comes back as it was (step included) and `metrics["skipped"]` is 1, so a diverging run keeps its last
    good state for the loop to save.
    """
    key = jax.random.fold_in(state.rng, state.step)
    if sequence_dropout > 0:
        dropped = modalities.drop_sequences(jax.random.fold_in(key, 7), batch["image"], sequence_dropout)
        batch = {**batch, "image": dropped}
    batch = {**batch, "step": state.step}
    history = getattr(state, "timestep_history", None)
    if history is not None:
        batch["t_probabilities"] = importance.bin_probabilities(history)
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(state.params, batch, key)
    per_example = aux.pop("per_example", None)
    if history is not None and per_example is None:
        raise ValueError(f"{method.name} does not support diffusion.importance_sampling")
    grad_norm = optax.global_norm(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(state.step, ema_max_decay)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    updated = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    if history is not None:
        updated = updated.replace(
            timestep_history=importance.record(history, per_example["bin"], per_example["loss"])
        )
    # An overflowing update (finite loss and gradients, infinite parameters) is rejected as well: otherwise
    # the state kept after the next, non-finite, loss would already be the diverged one.
    # Three scalars and one cond: a per-leaf isfinite + where over the state compiles ~50x slower on XLA:CPU.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(params))
    new_state = jax.lax.cond(finite, lambda: updated, lambda: state)
    metrics = {"loss": loss, "grad_norm": grad_norm, **aux, "skipped": 1.0 - finite.astype(jnp.float32)}
    return new_state, metrics


def make_train_step(method: Method, config: ml_collections.ConfigDict, mesh):
    """train_step jitted once: state replicated and donated, batch sharded over the data axis."""
    step = functools.partial(
        train_step,
        method=method,
        ema_max_decay=config.train.ema_decay,
        sequence_dropout=config.train.get("sequence_dropout", 0.0),
    )
    rep = parallel.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(rep, parallel.data_sharded(mesh)),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    progress: bool = True,
    stop_after: int | None = None,
    task: Task | None = None,
    config_file: str = "",
) -> TrainState:
    """Trains `config.method` to `config.train.steps`, resuming from the latest checkpoint in workdir.

    `stop_after` (default: `train.stop_after`, 0 = never) ends this run with a checkpoint after that many
    steps, as a preemption would; the next call resumes where it stopped. `task`: the config's task when the
    caller has it already (the programs look it up first, to report an unknown task before anything starts).
    The config is kept in <workdir>/config.json (`run_config`; `config_file`: the `--config` it came from);
    a resumed run must agree with it on the network and the data.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock = workdir_lock.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, StopRequest() as stop:
        if jax.process_index() == 0:
            run_config.keep(config, workdir, config_file or config_files.config_file_of(config))
        return _train(config, workdir, progress, stop_after, stop, task or tasks.get_task(config))


def _resume(latest: Checkpoints, state: TrainState) -> TrainState:
    """The newest readable checkpoint; unreadable newer ones are set aside with one warning line each."""
    steps = sorted(latest.all_steps(), reverse=True)
    for step in steps:
        try:
            restored = latest.restore(step, state)
        except Exception as err:  # orbax / TensorStore raise many kinds for a damaged checkpoint
            logging.warning(
                "checkpoint %s/%d is unreadable, skipped (%s)", latest.directory, step, reason(err)
            )
            continue
        for newer in steps[: steps.index(step)]:
            latest.set_aside(newer)
        logging.info("resumed from step %d", int(restored.step))
        return restored
    raise CheckpointError(
        f"{latest.directory}: no readable checkpoint among steps {sorted(steps)} "
        "(move the folder away to start afresh)"
    )


def _train(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    progress: bool,
    stop_after: int | None,
    stop: StopRequest,
    task: Task,
) -> TrainState:
    t = config.train
    if stop_after is None:
        stop_after = t.get("stop_after", 0) or None
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(t.batch_size, mesh)
    method = build_method(config)

    data = task.prepare_training(config, progress)
    logging.info("%s", data.description)
    train_arrays = data.train

    sample = {k: train_arrays[k][:1] for k in ("image", "label")}
    state = create_train_state(config, method, sample)
    state = jax.device_put(state, parallel.replicated(mesh))
    latest = Checkpoints(workdir / "checkpoints", max_to_keep=t.keep_checkpoints, cleanup_tmp=True)
    best = Checkpoints(
        workdir / "best",
        max_to_keep=1,
        best_metric=task.selection_label,
        best_mode=task.selection_mode,
        cleanup_tmp=True,
    )
    if latest.all_steps():
        state = _resume(latest, state)
    elif t.get("init_from"):
        state = init_from(state, t.init_from, mesh)
        logging.info("parameters from %s (fine-tuning: a fresh optimiser)", t.init_from)
    start = int(state.step)

    step_fn = make_train_step(method, config, mesh)
    predict_fn = inference.make_predict_fn(method, mesh)
    batches = input_pipeline.train_batches(
        train_arrays,
        global_batch_size=t.batch_size,
        seed=config.seed,
        start_step=start,
        augment=augmentation.from_config(config.data),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    writer = tensorflow_import.metric_writers().create_default_writer(
        str(workdir), just_logging=jax.process_index() > 0
    )

    def validate(state, step):
        def predict(images):
            key = jax.random.PRNGKey(config.seed + 7)
            batching = inference.eval_batching(config)
            return inference.predict_slices(predict_fn, state.ema_params, images, key, mesh, **batching)

        scalars = task.validation_scores(predict, data.val, config)
        writer.write_scalars(step, scalars)
        best.save(step, state, metrics={task.selection_label: scalars[task.selection]})
        return scalars[task.selection]

    last_saved = start
    step_seconds: list[float] = []
    tic = time.perf_counter()
    if stop.requested:  # while the data were prepared: nothing new to save
        logging.warning("stop requested before the first step of this run: stopping at step %d", start)
    with tqdm(total=t.steps, initial=start, desc="training", disable=not progress) as bar:
        for step in range(start if not stop.requested else t.steps, t.steps):
            batch = parallel.global_batch(mesh, next(batches))
            step_tic = time.perf_counter()
            state, metrics = step_fn(state, batch)
            loss = float(metrics["loss"])  # waits for the step: the timing below is the step's
            step_seconds.append(time.perf_counter() - step_tic)
            if float(metrics["skipped"]):
                # train_step left the state as it was: save it (the last good one) unless it is saved.
                good = int(state.step)
                if latest.latest_step() != good:
                    latest.save(good, state)
                grad_norm = float(metrics["grad_norm"])
                if not np.isfinite(loss):
                    what = f"loss became {loss}"
                elif not np.isfinite(grad_norm):
                    what = f"gradient norm became {grad_norm} (loss {loss})"
                else:
                    what = f"the updated parameters overflowed (loss {loss})"
                raise TrainingDiverged(
                    f"{what} at step {step + 1}; that step was not applied, the last good state "
                    f"(step {good}) is saved in {latest.directory}"
                )
            bar.update(1)
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
                scalars["train/steps_per_second"] = (done - start) / (time.perf_counter() - tic)
                writer.write_scalars(done, scalars)
                bar.set_postfix(loss=f"{loss:.4f}")
            if stop_after is not None and done - start >= stop_after:
                stop.requested = True
            if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                bar.set_postfix({task.selection_label: f"{validate(state, done):.3f}"})
            # After validation: a stop requested while it ran still saves this step.
            if done % t.checkpoint_every == 0 or done == t.steps or stop.requested:
                latest.save(done, state)
                last_saved = done
            if stop.requested:
                logging.warning("stop requested: saved step %d, stopping", last_saved)
                break
    writer.flush()
    latest.close()
    best.close()
    if jax.process_index() == 0 and step_seconds:
        _write_train_summary(workdir, config, state, step_seconds, time.perf_counter() - tic)
    return state


def _write_train_summary(workdir, config, state, step_seconds: list[float], loop_seconds: float) -> None:
    """<workdir>/train_summary.json: this run's timing (first step = compilation) and model size."""
    steady = step_seconds[1:] or step_seconds
    summary = {
        "method": config.method,
        "steps_this_run": len(step_seconds),
        "final_step": int(state.step),
        "finished": int(state.step) >= int(config.train.steps),  # False: stopped early, resumable
        "batch_size": int(config.train.batch_size),
        "devices": jax.device_count(),
        "first_step_seconds": step_seconds[0],
        "median_step_seconds": float(np.median(steady)),
        "loop_seconds": loop_seconds,
        "num_params": int(sum(np.size(p) for p in jax.tree.leaves(state.params))),
    }
    (workdir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
