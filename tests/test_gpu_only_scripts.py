"""GPU-only benchmark scripts refuse on a machine without a GPU, say so, and leave the committed
GPU results alone."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bench import attention

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "benchmarks-attention.md"

pytestmark = pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU refusal")


def test_attention_benchmark_refuses_without_a_gpu(capsys):
    before = COMMITTED.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        attention.main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no GPU found" in err and "--smoke" in err
    assert COMMITTED.read_bytes() == before


def test_attention_smoke_writes_only_where_told():
    assert attention.output_path(smoke=True, out=None) is None
    assert attention.output_path(smoke=True, out="/tmp/a.md") == Path("/tmp/a.md")
    assert attention.output_path(smoke=False, out=None) == Path("docs/benchmarks-attention.md")


def test_gpu_check_refuses_without_a_gpu():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no GPU found" in done.stderr and "[ok]" not in done.stdout
