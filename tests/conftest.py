"""Test setup: 8 CPU devices so meshes and sharding run for real, float32 matmuls, and the
official models' test data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# CLIs called in-process must not turn on the persistent compilation cache in ~/.cache.
os.environ.setdefault("YOCO_COMPILE_CACHE", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The official models' test vectors shipped in tests/testdata (small official-layout
    models with the official PyTorch code's logits and greedy tokens)."""
    return Path(__file__).resolve().parent / "testdata"
