"""The case groups of bench/gpu_perf.py. Each group runs in its own process (so device peak
memory is its own) and yields result rows as it goes; `deadline.allows(estimate_s)` skips a
case that would overrun the run's time budget, and a case that fails is reported, not raised.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.attention import XLA_SCORE_BYTES_LIMIT, _attention_impls, _forward_backward, _run_timed
from bench.machine import PeakTracker
from bench.models import params_bytes, random_params
from yoco_jax import get_config
from yoco_jax.api import Model
from yoco_jax.ops.attention import cache_attention, causal_attention
from yoco_jax.ops.attention_choice import choose_attention

FULL = {
    "heads": 24,
    "kv_heads": 8,
    "head_dim": 128,
    "lengths": [8192, 32768, 131072],
    "chunk": 4096,
    "transformer": "transformer-3b",
    "transformer_length": 32768,
    "yoco": "yoco-3b-1m",
    "yoco_lengths": [1048576],
    "yoco_chunks": [4096, 16384],
}
SMOKE = {
    "heads": 6,
    "kv_heads": 2,
    "head_dim": 32,
    "lengths": [128, 256],
    "chunk": 64,
    "transformer": "transformer-tiny",
    "transformer_length": 256,
    "yoco": "yoco-tiny",
    "yoco_lengths": [512, 1024],
    "yoco_chunks": [64, 256],
}


def _error(error) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:160]}"


def _attempt(row, fn, *args):
    """Runs fn(row, *args), which fills row; a failure becomes the row's error."""
    try:
        fn(row, *args)
    except Exception as error:  # noqa: BLE001 - report every failure, keep benchmarking
        row["error"] = _error(error)
    return row


def _qkv(seed, q_len, kv_len, cfg):
    keys = jax.random.split(jax.random.key(seed), 4)
    h, hkv, d = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q = jax.random.normal(keys[0], (1, q_len, h, d), jnp.bfloat16)
    k = jax.random.normal(keys[1], (1, kv_len, hkv, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (1, kv_len, hkv, d), jnp.bfloat16)
    return q, k, v, jax.random.normal(keys[3], q.shape, jnp.bfloat16)


def attention(cfg, deadline, smoke):
    """(a) causal attention, each impl, forward and forward+backward; (b) what auto picks."""
    heads, d = cfg["heads"], cfg["head_dim"]
    impls = {**_attention_impls(), "auto": lambda q, k, v: causal_attention(q, k, v, impl="auto")}
    for length in cfg["lengths"]:
        q, k, v, d_out = _qkv(length, length, length, cfg)
        flops = 4 * heads * length * length * d / 2  # causal: half the scores
        for name, fn in impls.items():
            row = {"case": "attention", "T": length, "impl": name}
            if name == "auto":
                row["choice"] = choose_attention(jax.default_backend(), "causal", q.dtype, d, None)
            if name == "xla" and 4 * heads * length * length > XLA_SCORE_BYTES_LIMIT:
                yield {**row, "skipped": "float32 scores too large"}
                continue
            if not deadline.allows(3 if smoke else 4 + length / 16384):
                yield {**row, "skipped": "time budget"}
                continue

            yield _attempt(row, _causal_times, fn, (q, k, v, d_out), flops)
        del q, k, v, d_out
    yield from _cache_kinds(cfg, deadline, smoke)


def _causal_times(row, fn, args, flops):
    row["fwd_ms"] = _run_timed(jax.jit(fn), args[:3]) * 1e3
    row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
    row["fwdbwd_ms"] = _run_timed(_forward_backward(fn), args) * 1e3
    row["fwdbwd_tflops"] = 3.5 * flops / row["fwdbwd_ms"] / 1e9


def _cache_time(row, impl, args, outputs):
    """Times cache_attention with `impl`; with `outputs` (a dict), also its relative max error
    against the first impl's output."""
    fn = jax.jit(lambda q, k, v, n: cache_attention(q, k, v, n, impl=impl))
    row["fwd_ms"] = _run_timed(fn, args) * 1e3
    if outputs is not None:
        out = np.asarray(fn(*args), np.float32)
        first = outputs.setdefault("first", out)
        row["rel_err_vs_auto"] = float(np.abs(out - first).max() / np.abs(first).max())


def _cache_kinds(cfg, deadline, smoke):
    """(b) a prefill chunk and a decode query against a full cache: auto vs the other paths;
    the first length also checks auto against the XLA path (relative max error)."""
    d = cfg["head_dim"]
    for index, length in enumerate(cfg["lengths"]):
        for kind, q_len in (("chunk", cfg["chunk"]), ("decode", 1)):
            q, k, v, _ = _qkv(7 + index, q_len, length, cfg)
            lengths = jnp.full((1,), length, jnp.int32)
            choice = choose_attention(jax.default_backend(), kind, q.dtype, d, None, length)
            outputs = {} if index == 0 else None  # the first length checks errors too
            for impl in ("auto", "pallas", "xla"):
                row = {"case": f"{kind} vs cache", "T": length, "Tq": q_len, "impl": impl}
                row["choice"] = choice if impl == "auto" else impl
                if not deadline.allows(2 if smoke else 3 + length / 32768):
                    yield {**row, "skipped": "time budget"}
                    continue
                yield _attempt(row, _cache_time, impl, (q, k, v, lengths), outputs)
            del q, k, v


def _model(name):
    cfg = get_config(name, dtype="bfloat16", param_dtype="bfloat16")
    return Model(cfg, random_params(cfg)), params_bytes(cfg)


def _prefill_row(row, model, weights, length, chunk):
    """Times `model.prefill` of one random prompt (first call: compile included) and records
    the device peak of the case (exact when it raised the process record)."""
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, length).tolist()
    tracker = PeakTracker(owned_before=weights)
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = jax.block_until_ready(model.prefill([prompt], prefill_chunk=chunk, max_len=length))
        runs.append(time.perf_counter() - t0)
        del out  # free the cache before the next run
    row["first_s"], row["steady_s"] = runs
    row["tokens_per_s"] = length / runs[1]
    peak = tracker.peak()
    row["peak_gb"] = None if peak is None else peak / 1e9
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        row["process_peak_gb"] = stats["peak_bytes_in_use"] / 1e9


def transformer_prefill(cfg, deadline, smoke):
    """(c) the Transformer baseline: chunked prefill (default chunk) vs one chunk."""
    length = cfg["transformer_length"]
    if not deadline.allows(5 if smoke else 60):
        yield {"case": "transformer prefill", "skipped": "time budget"}
        return
    model, weights = _model(cfg["transformer"])
    for chunk in (cfg["chunk"], length):  # increasing expected memory: peaks stay exact
        row = {"case": f"{cfg['transformer']} prefill", "T": length, "chunk": chunk}
        if not deadline.allows(5 if smoke else 45):
            yield {**row, "skipped": "time budget"}
            continue
        yield _attempt(row, _prefill_row, model, weights, length, chunk)


def yoco_prefill(cfg, deadline, smoke):
    """(d) YOCO's long prefill at two chunk sizes (1M only if the budget allows)."""
    if not deadline.allows(5 if smoke else 60):
        yield {"case": "yoco prefill", "skipped": "time budget"}
        return
    model, weights = _model(cfg["yoco"])
    for length in cfg["yoco_lengths"]:
        for chunk in cfg["yoco_chunks"]:
            row = {"case": f"{cfg['yoco']} prefill", "T": length, "chunk": chunk}
            if not deadline.allows(5 if smoke else 30 + 4 * length / 2**18):
                yield {**row, "skipped": "time budget"}
                continue
            yield _attempt(row, _prefill_row, model, weights, length, chunk)
