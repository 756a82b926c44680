"""TensorFlow and clu's writers come without Keras, and Keras stays importable afterwards."""

import os
import subprocess
import sys

from tests.conftest import ROOT

_PROBE = """
import importlib.util, pathlib, sys
from diffseg_jax import tensorflow_import
tf = tensorflow_import.tensorflow()
batches = list(tf.data.Dataset.range(6).shuffle(6, seed=0).batch(4).as_numpy_iterator())
writer = tensorflow_import.metric_writers().create_default_writer(sys.argv[1])
writer.write_scalars(1, {"loss": 0.5})
writer.write_hparams({"lr": 3e-4})
writer.flush()
print(sorted(int(v) for b in batches for v in b), "keras" in sys.modules, "matplotlib" in sys.modules,
      importlib.util.find_spec("keras.src.optimizers") is not None)
"""


def test_tensorflow_and_the_writers_import_without_keras(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", _PROBE, str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
    # tf.data works, Keras and matplotlib were not loaded, and Keras's optimisers are importable again.
    assert out.splitlines()[-1] == "[0, 1, 2, 3, 4, 5] False False True"
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100  # scalars and hyper-parameters written
