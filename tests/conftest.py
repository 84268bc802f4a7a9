"""Test setup: 8 CPU devices so meshes and sharding run for real, float32 matmuls, jaxtyping's
run-time shape checks on the package, and the official models' test data."""

import os
import sys
from pathlib import Path

import pytest

# Tests live in folders that mirror the package; their shared helpers (processes.py,
# numpy_yoco.py, lm_eval_tasks.py) sit here, importable from every folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# CLIs called in-process must not turn on the persistent compilation cache in ~/.cache.
os.environ.setdefault("YOCO_COMPILE_CACHE", "0")

import jax  # noqa: E402
import jaxtyping  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Every annotation of the package is checked at run time (beartype on each call; a dimension
# named alike in one signature must agree), installed before anything imports yoco_jax. The
# PEP 484 numeric tower: an int is a valid `float`, as the annotations mean it.
# YOCO_TYPECHECK=0 leaves it off (to time a test without it).
if os.environ.get("YOCO_TYPECHECK", "1") != "0":
    jaxtyping.install_import_hook(
        "yoco_jax", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
    )


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The official models' test vectors shipped in tests/testdata (small official-layout
    models with the official PyTorch code's logits and greedy tokens)."""
    return Path(__file__).resolve().parent / "testdata"
