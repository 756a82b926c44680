"""Trains a method: python run_train.py --config=configs/btsegdiff.py --workdir=runs/btsegdiff."""

from diffseg_jax import cli

if __name__ == "__main__":
    cli.main("train")
