"""The absl entry points behind run_train.py and run_eval.py.

Before JAX starts they set the measured-fastest backend defaults (`runtime.configure`; XLA_FLAGS you
set yourself win), join a multi-process run when the environment describes one, and turn on the
persistent compilation cache, so a second run of the same config starts without recompiling.
"""

from __future__ import annotations

import sys

from diffseg_jax import runtime


def main(mode: str) -> None:
    try:
        runtime.configure()
    except ValueError as err:  # a malformed DIFFSEG_* variable: one line, not a traceback
        sys.exit(f"error: {err}")
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "Method config file (configs/*.py).")
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(argv):
        del argv
        from data_pipelines.brats import DataError
        from diffseg_jax import parallel

        try:
            parallel.maybe_initialize_distributed()
        except ValueError as err:
            sys.exit(f"error: {err}")
        runtime.enable_compilation_cache()
        try:
            if mode == "train":
                from diffseg_jax.train import TrainingDiverged, train_and_evaluate

                try:
                    train_and_evaluate(config.value, workdir.value)
                except TrainingDiverged as err:
                    sys.exit(f"error: {err}")
            elif config.value.get("task", "segmentation") == "anomaly":
                from diffseg_jax.anomaly.evaluate import evaluate

                summary = evaluate(config.value, workdir.value)
                for name, stats in summary["sequences"].items():
                    print(
                        f"{name}: DSC {stats['dsc']['mean']:.4f}  AUPRC {stats['auprc']['mean']:.4f}"
                        f"  SSIM {stats['ssim']['mean']:.4f}  PSNR {stats['psnr']['mean']:.2f} dB"
                    )
            elif config.value.get("task", "segmentation") == "synthesis":
                from diffseg_jax.missing.synthesis import evaluate_synthesis

                summary = evaluate_synthesis(config.value, workdir.value)
                for name, stats in summary["per_sequence"].items():
                    base = summary["baseline_mean"]["per_sequence"][name]["psnr"]["mean"]
                    print(
                        f"{name}: PSNR {stats['psnr']['mean']:.2f} dB  SSIM {stats['ssim']['mean']:.4f}"
                        f"  MAE {stats['mae']['mean']:.4f}  (mean of available: PSNR {base:.2f} dB)"
                    )
            else:
                from diffseg_jax.evaluate import evaluate

                summary = evaluate(config.value, workdir.value)
                if config.value.eval.get("available") == "each":
                    from diffseg_jax.missing.tables import subsets_markdown

                    print(subsets_markdown({config.value.method: summary}))
                    return
                for region, stats in summary["regions"].items():
                    print(
                        f"{region}: dice {stats['dice']['mean']:.4f} ± {stats['dice']['std']:.4f}"
                        f"  hd95 {stats['hd95']['mean']:.2f} mm"
                    )
        except (DataError, FileNotFoundError) as err:
            sys.exit(f"error: {err}")

    def parse_flags(argv):
        """Flags parsing whose errors (e.g. an unknown config key) are one line, not a traceback."""
        try:
            return flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
            text = str(err).replace("\\n", "\n").replace("\\'", "'")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            # A config file that raised comes with its traceback inside the message: keep its last line.
            message = lines[-1] if "Traceback" in text else " ".join(lines)
            sys.exit(f"error: bad command line: {message}")

    app.run(run, flags_parser=parse_flags)
