"""Mixed precision as a wrapper of `model.apply`: float32 parameters, compute in a lower dtype.

The wrapped apply casts the floating parameters and array arguments to the compute dtype and its
floating outputs back to float32, so losses, optimiser state and EMA stay float32 and the gradients
reach the float32 parameters through the casts (the jmp "policy" pattern, without a dependency).
FFT-based layers compute in complex64 whatever the input and return the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _cast_floating(tree: Any, dtype) -> Any:
    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def apply_in(apply_fn: Callable[..., Any], dtype) -> Callable[..., Any]:
    """`apply_fn(variables, *args, **kwargs)` computed in `dtype`, returning float32; identity for f32."""
    if jnp.dtype(dtype) == jnp.float32:
        return apply_fn

    def wrapped(variables, *args, **kwargs):
        out = apply_fn(_cast_floating(variables, dtype), *_cast_floating(args, dtype), **kwargs)
        return _cast_floating(out, jnp.float32)

    return wrapped
