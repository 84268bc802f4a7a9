"""bench/gpu_perf.py's `retention` group: the Pallas retention kernel against the XLA form.

    python -m bench.gpu_perf --out $OUT --groups retention

- forward of gated retention at 32K and 128K tokens (batch 1, 24 heads, head dim 128/128, bf16
  q/k/v, float32 gates log_sigmoid(x) / 16 as the model makes them): our XLA
  `chunkwise_retention` (chunks of 256, the model's) and the Triton kernel
  (kernels/retention_gpu.py) at a few tiles (chunk C, value block BV, Triton warps); ms,
  tokens/s and the kernel's relative max error against XLA (output and final state). fla's Triton
  `chunk_simple_gla` took 1.20 ms at 32K on an H100 (bench/peer_fla.py), our XLA form 4.26 ms;
- yoco-3b-1m prefill of 1M tokens in chunks of 16384 with `retention_impl=pallas` (random bf16
  weights; the `yoco` group gives the same prefill with the XLA retention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench.attention import _run_timed
from bench.gpu_perf_cases import _attempt, _model, _prefill_row
from yoco_jax.kernels.retention_gpu import retention_forward
from yoco_jax.ops.retention import chunkwise_retention

FULL = {
    "heads": 24,
    "head_dim": 128,
    "lengths": [32768, 131072],
    "xla_chunk": 256,
    "tiles": [(64, 64, 4), (64, 64, 8), (64, 32, 4), (32, 32, 4), (64, 16, 4)],
    "model": "yoco-3b-1m",
    "prefill": (1048576, 16384),
}
SMOKE = {
    "heads": 3,
    "head_dim": 32,
    "lengths": [200],
    "xla_chunk": 64,
    "tiles": [(16, 16, 4), (32, 32, 8)],
    "model": "yoco-tiny",
    "prefill": (256, 64),
}


def _inputs(length, sizes):
    keys = jax.random.split(jax.random.key(length), 4)
    shape = (1, length, sizes["heads"], sizes["head_dim"])
    q, k, v = (jax.random.normal(keys[i], shape, jnp.bfloat16) for i in range(3))
    log_gate = jax.nn.log_sigmoid(jax.random.normal(keys[3], shape[:3])) / 16
    return q, k, v, log_gate


def _relative(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _forward_row(row, fn, args, length, reference):
    """Times fn(*args) -> (out, state); with `reference` (XLA's outputs) also the errors."""
    fn = jax.jit(fn)
    seconds = _run_timed(fn, args)
    row["ms"], row["tokens_per_s"] = seconds * 1e3, length / seconds
    if reference is not None:
        out, state = fn(*args)
        row["rel_err_vs_xla"] = _relative(out, reference[0])
        row["state_rel_err_vs_xla"] = _relative(state, reference[1])


def retention(cfg, deadline, smoke):
    """The forward at each length (XLA first, then each kernel tile), then the 1M prefill."""
    del cfg  # the attention sizes of gpu_perf_cases; retention has its own
    sizes = SMOKE if smoke else FULL
    for length in sizes["lengths"]:
        args = _inputs(length, sizes)
        xla = lambda q, k, v, g: chunkwise_retention(q, k, v, g, sizes["xla_chunk"])
        row = {"case": "retention fwd", "T": length, "impl": f"xla C{sizes['xla_chunk']}"}
        if not deadline.allows(3 if smoke else 10 + length / 16384):
            yield {**row, "skipped": "time budget"}
            continue
        yield _attempt(row, _forward_row, xla, args, length, None)
        reference = jax.jit(xla)(*args)
        for chunk, block_v, warps in sizes["tiles"]:
            impl = f"pallas C{chunk} BV{block_v} w{warps}"
            row = {"case": "retention fwd", "T": length, "impl": impl}
            if not deadline.allows(3 if smoke else 8 + length / 32768):
                yield {**row, "skipped": "time budget"}
                continue
            kernel = lambda q, k, v, g, c=chunk, bv=block_v, w=warps: retention_forward(
                q, k, v, g, chunk_size=c, block_v=bv, num_warps=w
            )
            yield _attempt(row, _forward_row, kernel, args, length, reference)
        del args, reference
    yield from _prefill(sizes, deadline, smoke)


def _prefill(sizes, deadline, smoke):
    length, chunk = sizes["prefill"]
    row = {"case": f"{sizes['model']} prefill", "T": length, "chunk": chunk}
    row["retention_impl"] = "pallas"
    if not deadline.allows(5 if smoke else 60 + 4 * length / 2**18):
        yield {**row, "skipped": "time budget"}
        return
    model, weights = _model(sizes["model"])
    model = model.replace(retention_impl="pallas")
    yield _attempt(row, _prefill_row, model, weights, length, chunk)
