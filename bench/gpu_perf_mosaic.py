"""The `mosaic` group of bench/gpu_perf.py: is a Mosaic GPU (wgmma + TMA) flash attention the
way to >= 0.95x cuDNN on Hopper? Times JAX's own Mosaic GPU kernel
(`jax.experimental.pallas.ops.gpu.attention_mgpu`) against cuDNN and our Triton kernel at
yoco-3b's attention shape (causal, bf16, 24/8 heads, head dim 128), over a few tile choices,
with each output's relative max error against cuDNN's. Forward only where the Mosaic kernel has
no causal backward (the row then says so).
"""

from __future__ import annotations

import jax
import numpy as np

from bench.attention import _attention_impls, _forward_backward, _run_timed
from bench.gpu_perf_cases import _attempt, _qkv

TILES = ((64, 128, 2), (64, 128, 3), (64, 64, 4))  # (block_q, block_kv, concurrent steps)


def _mosaic(block_q, block_kv, steps):
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mgpu

    config = mgpu.TuningConfig(
        block_q=block_q, block_kv=block_kv, max_concurrent_steps=steps, causal=True
    )
    return lambda q, k, v: mgpu.attention(q, k, v, config)


def _time(row, fn, args, flops, reference):
    row["fwd_ms"] = _run_timed(jax.jit(fn), args[:3]) * 1e3
    row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
    out = np.asarray(jax.jit(fn)(*args[:3]), np.float32)
    if reference is not None:
        row["rel_err_vs_cudnn"] = float(np.abs(out - reference).max() / np.abs(reference).max())
    row["fwdbwd_ms"] = _run_timed(_forward_backward(fn), args) * 1e3
    row["fwdbwd_tflops"] = 3.5 * flops / row["fwdbwd_ms"] / 1e9


def mosaic(cfg, deadline, smoke):
    if smoke or jax.default_backend() != "gpu":
        yield {"case": "mosaic", "skipped": "needs a Hopper GPU"}
        return
    heads, d = cfg["heads"], cfg["head_dim"]
    impls = _attention_impls()
    for length in cfg["lengths"][:2]:  # 8K and 32K
        q, k, v, d_out = _qkv(length, length, length, cfg)
        flops = 4 * heads * length * length * d / 2
        reference = np.asarray(jax.jit(impls["cudnn"])(q, k, v), np.float32)
        cases = {"cudnn": impls["cudnn"], "pallas-triton": impls["pallas"]}
        cases.update({f"mosaic q{a} kv{b} s{c}": _mosaic(a, b, c) for a, b, c in TILES})
        for name, fn in cases.items():
            row = {"case": "mosaic probe", "T": length, "impl": name}
            if not deadline.allows(4 + length / 16384):
                yield {**row, "skipped": "time budget"}
                continue
            yield _attempt(row, _time, fn, (q, k, v, d_out), flops, reference)
        del q, k, v, d_out
