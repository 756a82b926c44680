"""The absl entry points behind run_train.py and run_eval.py.

Before JAX starts they set the measured-fastest backend defaults (`runtime.configure`; XLA_FLAGS you
set yourself win), join a multi-process run when the environment describes one, and turn on the
persistent compilation cache, so a second run of the same config starts without recompiling.
Training and evaluation are the task's (`config.task`, `diffseg_jax/tasks/`); bad input ends the run with
one line naming what is wrong.
"""

from __future__ import annotations

import sys

import ml_collections

from diffseg_jax import runtime


def config_source(argv: list[str]) -> str:
    """The `--config` of a command line, its file as an absolute path (kept with the run)."""
    from diffseg_jax import command_line
    from diffseg_jax.config_files import find_config_file

    spec = command_line.flag_value(argv, "config") or ""
    path, colon, preset = spec.partition(":")
    found = find_config_file(path)
    return f"{found}{colon}{preset}" if found else spec


def kept_config(
    mode: str, config: ml_collections.ConfigDict, workdir: str, argv: list[str]
) -> ml_collections.ConfigDict:
    """The config to run with in `workdir`: an evaluation takes the run's kept config and the command line's
    own overrides; a training is checked against it when it resumes, and `train.init_from` takes the
    source run's network."""
    from diffseg_jax import command_line, run_config

    overrides = command_line.overrides(argv)
    saved = run_config.load(workdir)
    if mode == "eval":
        return config if saved is None else run_config.for_evaluation(config, overrides, saved, workdir)
    if config.train.get("init_from"):
        run_config.network_from(config, config.train.init_from, overrides)
    if saved is not None and run_config.has_checkpoints(workdir):
        run_config.check_resume(config, saved, workdir)
    return config


DOCS = {
    "train": "Trains a method, resuming from the workdir's newest checkpoint.",
    "eval": "Evaluates a trained run (the config it kept, the command line's eval-side overrides).",
}


def train() -> None:
    """The `diffseg-train` console script."""
    main("train", program="diffseg-train")


def evaluate() -> None:
    """The `diffseg-eval` console script."""
    main("eval", program="diffseg-eval")


def main(mode: str, program: str = "") -> None:
    try:
        runtime.configure()
    except ValueError as err:  # a malformed DIFFSEG_* variable: one line, not a traceback
        sys.exit(f"error: {err}")
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    from diffseg_jax import command_line
    from diffseg_jax.vocabulary import ConfigError

    program = program or ("python run_train.py" if mode == "train" else "python run_eval.py")
    if any(arg in ("--help", "-h", "-?", "--helpshort") for arg in sys.argv[1:]):
        doc = sys.modules["__main__"].__doc__ or DOCS[mode]
        print(command_line.HELP.format(doc=doc.strip(), program=program))
        sys.exit(0)
    config = config_flags.DEFINE_config_file("config", None, "Method config file (configs/*.py).")
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
    print_config = flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
    flags.mark_flags_as_required(["config"])

    def run(argv):
        del argv
        try:  # a config file that failed to load gives a stand-in that raises on first use
            config.value.to_dict()
        except Exception as err:  # noqa: BLE001 - any failure of the user's config file: one line
            sys.exit(f"error: {command_line.config_load_error(sys.argv[1:], err)}")
        try:  # with a workdir, the config of the run kept there (resolved.py)
            resolved = kept_config(mode, config.value, workdir.value, sys.argv[1:]) if workdir.value else None
        except ConfigError as err:
            sys.exit(f"error: {err}")
        if print_config.value:
            print(resolved or config.value)
            return
        if not workdir.value:
            sys.exit(f"error: {program} needs --workdir=<folder>")
        if not flags.FLAGS["verbosity"].present:  # library INFO lines only on request
            absl_logging.get_absl_handler().addFilter(command_line.ProjectInfoOnly())
        from data_pipelines.brats import DataError
        from diffseg_jax import parallel, stop_signal, tasks, workdir_lock
        from diffseg_jax.checkpoint import CheckpointError

        try:
            parallel.maybe_initialize_distributed()
        except ValueError as err:
            sys.exit(f"error: {err}")
        runtime.enable_compilation_cache()
        try:
            task = tasks.get_task(resolved)
            if mode == "train":
                from diffseg_jax import train  # TensorFlow (tf.data, TensorBoard) loads with it

                try:
                    state = train.train_and_evaluate(
                        resolved, workdir.value, task=task, config_file=config_source(sys.argv[1:])
                    )
                except (train.TrainingDiverged, CheckpointError, workdir_lock.WorkdirBusy) as err:
                    sys.exit(f"error: {err}")
                if int(state.step) < resolved.train.steps:
                    print(
                        f"stopped at step {int(state.step)} of {resolved.train.steps} (saved); "
                        "the same command resumes",
                        file=sys.stderr,
                    )
                    sys.exit(stop_signal.EXIT_STOPPED)
                return
            try:
                summary, out_dir = tasks.evaluate(resolved, workdir.value, True)
            except workdir_lock.WorkdirBusy as err:
                sys.exit(f"error: {err}")
            except stop_signal.Stopped as err:
                print(f"{err}; the same command resumes", file=sys.stderr)
                sys.exit(stop_signal.EXIT_STOPPED)
            for line in task.summary_lines(resolved, summary):
                print(line)
            print(f"outputs: {out_dir}")
        except (ConfigError, DataError, FileNotFoundError, CheckpointError) as err:
            sys.exit(f"error: {err}")
        except OSError as err:  # a full disk or a read-only folder: the path and the cause
            sys.exit(f"error: {err.filename or ''}: {err.strerror or err}")

    def parse_flags(argv):
        """Flags parsing whose errors (e.g. an unknown config key) are one line, not a traceback."""
        argv = command_line.with_config_file_found(argv)
        if mode == "eval":
            argv = command_line.with_kept_config_file(argv)
        if command_line.flag_value(argv[1:], "config") is None and not set(argv[1:]) & {"--helpfull"}:
            workdir_given = command_line.flag_value(argv[1:], "workdir")
            kept = (
                f" (the run in {workdir_given} kept no config.json)"
                if workdir_given and mode == "eval"
                else ""
            )
            sys.exit(f"error: {program} needs --config=<method>[:<preset>]{kept}; --help shows the usage")
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
            unknown = command_line.unknown_field(argv[1:])
            if unknown:
                sys.exit(f"error: {unknown}")
            text = str(err).replace("\\n", "\n").replace("\\'", "'")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            # A config file that raised comes with its traceback inside the message: keep its last line.
            message = command_line.strip_class_path(lines[-1] if "Traceback" in text else " ".join(lines))
            sys.exit(f"error: bad command line: {message}")

    app.run(run, flags_parser=parse_flags)
