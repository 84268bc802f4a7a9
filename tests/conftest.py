"""Test setup: 8 CPU devices so meshes and sharding run for real, float32 matmuls, and the
official models' test data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """shared/testdata beside the checkout (CI copies shared/ next to its clone), or
    $YOCO_TESTDATA."""
    here = Path(__file__).resolve()
    candidates = [Path(os.environ["YOCO_TESTDATA"])] if "YOCO_TESTDATA" in os.environ else []
    candidates += [parent / "shared" / "testdata" for parent in here.parents]
    for path in candidates:
        if (path / "official-swa" / "expected.npz").exists():
            return path
    raise FileNotFoundError(
        "official test data not found: expected shared/testdata beside the checkout or "
        "YOCO_TESTDATA=<folder>; looked in " + ", ".join(map(str, candidates))
    )
