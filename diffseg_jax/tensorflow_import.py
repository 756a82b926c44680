"""TensorFlow and clu's metric writers, imported without Keras.

TensorFlow serves this project for tf.data and TensorBoard event files only. Imported as it is, it loads Keras
too, twice over: TensorFlow's `__init__` imports Keras's optimisers eagerly (to register them for SavedModel,
inside `except ImportError`), and TensorBoard's hyper-parameter API, which clu's summary writer imports,
subclasses a Keras callback at import time. Keras brings its model zoo and matplotlib.pyplot with it: on the
2-core CPU machine about 40% of the import, paid again by every training process (the CLIs, each process of a
multi-host run, every benchmark launch).

Here the optimisers' module is marked absent while TensorFlow imports (TensorFlow skips it) and unmarked
afterwards, so Keras stays importable for whoever wants it; TensorBoard's Keras-callback module is replaced by
one whose callback refuses use, since nothing here trains a Keras model.
"""

from __future__ import annotations

import sys
import types
from typing import Any

KERAS_OPTIMIZERS = "keras.src.optimizers"  # what TensorFlow's __init__ imports eagerly
HPARAMS_KERAS = "tensorboard.plugins.hparams._keras"  # what TensorBoard's hparams API imports


class _NoKerasCallback:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "TensorBoard's hparams Keras callback is not loaded in a diffseg_jax process; "
            "import tensorboard.plugins.hparams.api before the first training run to use it"
        )


def tensorflow() -> Any:
    """`import tensorflow`, without the Keras optimisers TensorFlow would import with it."""
    if "tensorflow" not in sys.modules and KERAS_OPTIMIZERS not in sys.modules:
        sys.modules[KERAS_OPTIMIZERS] = None  # an import of it raises ImportError, which TensorFlow skips
        try:
            import tensorflow  # noqa: F401
        finally:
            if KERAS_OPTIMIZERS in sys.modules and sys.modules[KERAS_OPTIMIZERS] is None:
                del sys.modules[KERAS_OPTIMIZERS]
    import tensorflow as tf

    return tf


def metric_writers() -> types.ModuleType:
    """`clu.metric_writers` (TensorBoard + console writers), without Keras."""
    tensorflow()
    if HPARAMS_KERAS not in sys.modules:
        stub = types.ModuleType(HPARAMS_KERAS, "TensorBoard's Keras callback, not loaded (no Keras here).")
        stub.Callback = _NoKerasCallback
        sys.modules[HPARAMS_KERAS] = stub
    from clu import metric_writers as writers

    return writers
