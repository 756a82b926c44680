"""Backend defaults, the compilation cache, mixed precision and rematerialisation."""

import os
import pathlib
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import btsegdiff
from diffseg_jax import runtime
from diffseg_jax.methods.registry import build_method

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_configure_adds_defaults_but_never_overrides_the_user():
    defaults = {runtime.YNN_FLAG: "off", runtime.DEVICE_COUNT_FLAG: "2"}
    merged = runtime.merge_xla_flags("--xla_dump_to=/tmp/x", defaults)
    assert merged.split() == [
        "--xla_dump_to=/tmp/x",
        f"{runtime.YNN_FLAG}=off",
        f"{runtime.DEVICE_COUNT_FLAG}=2",
    ]
    user = f"{runtime.YNN_FLAG}=custom {runtime.DEVICE_COUNT_FLAG}=3"
    assert runtime.merge_xla_flags(user, defaults) == user
    assert (
        f"{runtime.DEVICE_COUNT_FLAG}=2"
        in runtime.configure(environ={"DIFFSEG_CPU_DEVICES": "2"})["XLA_FLAGS"]
    )
    env = runtime.configure(environ={"XLA_FLAGS": user, "DIFFSEG_CPU_DEVICES": "2"})
    assert env["XLA_FLAGS"] == user
    assert "XLA_FLAGS" not in runtime.configure(
        environ={"DIFFSEG_XLA_DEFAULTS": "0", "DIFFSEG_CPU_DEVICES": "2"}
    )


def test_malformed_environment_is_one_line_naming_the_variable(tmp_path):
    with pytest.raises(ValueError, match="DIFFSEG_CPU_DEVICES='two' is not an integer"):
        runtime.configure(environ={"DIFFSEG_CPU_DEVICES": "two"})
    env = dict(os.environ)
    env.update(DIFFSEG_CPU_DEVICES="two", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        str(ROOT / "run_train.py"),
        "--config=configs/btsegdiff.py:smoke",
        f"--workdir={tmp_path}",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: environment variable DIFFSEG_CPU_DEVICES='two' is not an integer"
    )


def test_compute_dtype():
    assert runtime.compute_dtype("auto") == jnp.float32  # tests run on the CPU
    assert runtime.compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        runtime.compute_dtype("int8")


_CACHE_PROBE = """
import sys
from diffseg_jax import runtime
runtime.configure()
import jax, jax.numpy as jnp
runtime.enable_compilation_cache(sys.argv[1], min_compile_seconds=0)
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T)(jnp.ones((32, 32))).block_until_ready()
print("hits", events.count("/jax/compilation_cache/cache_hits"))
"""


def test_second_process_reads_compiled_programs_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = str(ROOT)

    def run() -> str:
        cmd = [sys.executable, "-c", _CACHE_PROBE, str(tmp_path)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[-1]

    assert run() == "hits 0"
    assert any(tmp_path.iterdir())
    assert run() != "hits 0"


def _batch():
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(2, 32, 32, 4)), jnp.float32),
        "label": jnp.asarray(rng.random((2, 32, 32, 3)) > 0.8, jnp.float32),
    }


def _loss_and_grads(config, params):
    method = build_method(config)
    return jax.jit(jax.value_and_grad(method.loss, has_aux=True))(params, _batch(), jax.random.PRNGKey(1))


def test_bfloat16_compute_keeps_float32_params_and_gradients():
    f32 = btsegdiff.get_config("smoke")
    bf16 = btsegdiff.get_config("smoke")
    bf16.model.dtype = "bfloat16"
    params = build_method(f32).init(jax.random.PRNGKey(0), _batch())
    (loss32, _), _ = _loss_and_grads(f32, params)
    (loss16, _), grads = _loss_and_grads(bf16, params)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert abs(float(loss16) - float(loss32)) < 0.05 * abs(float(loss32))
    # The convolutions really run in bfloat16.
    jaxpr = str(jax.make_jaxpr(build_method(bf16).loss)(params, _batch(), jax.random.PRNGKey(1)))
    assert "conv_general_dilated" in jaxpr and "bf16[2,32,32,8]" in jaxpr


def _rename(tree, old: str, new: str):
    return {k.replace(old, new): _rename(v, old, new) if isinstance(v, dict) else v for k, v in tree.items()}


def test_remat_gives_the_same_loss_and_gradients():
    plain = btsegdiff.get_config("smoke")
    remat = btsegdiff.get_config("smoke")
    remat.model.remat = True
    params = flax.core.unfreeze(build_method(plain).init(jax.random.PRNGKey(0), _batch()))
    (loss, _), grads = _loss_and_grads(plain, params)
    (loss_r, _), grads_r = _loss_and_grads(remat, _rename(params, "ResBlock", "CheckpointResBlock"))
    assert float(loss) == pytest.approx(float(loss_r), rel=1e-6)
    grads_r = _rename(grads_r, "CheckpointResBlock", "ResBlock")
    assert jax.tree.structure(grads) == jax.tree.structure(grads_r)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # and it is really rematerialised: the remat config's jaxpr has checkpoint (remat) regions
    jaxpr = str(
        jax.make_jaxpr(jax.grad(lambda p: build_method(remat).loss(p, _batch(), jax.random.PRNGKey(1))[0]))(
            _rename(params, "ResBlock", "CheckpointResBlock")
        )
    )
    assert "remat" in jaxpr or "checkpoint" in jaxpr
