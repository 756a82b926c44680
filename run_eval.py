"""Evaluates a trained method: python run_eval.py --config=configs/btsegdiff.py --workdir=runs/btsegdiff."""

from diffseg_jax import cli

if __name__ == "__main__":
    cli.main("eval")
