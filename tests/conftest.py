"""Test setup: four forced CPU host devices (so sharding is exercised) before JAX initialises."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tempfile  # noqa: E402

# Generated phantom data and slice caches go to one throwaway folder per test session (subprocesses
# inherit it), never to the user's cache.
os.environ.setdefault("DIFFSEG_CACHE", tempfile.mkdtemp(prefix="diffseg-test-cache-"))
