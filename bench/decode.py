"""Decode throughput against context length: at the same memory budget (each model at the largest
batch whose weights + cache fit it, as the paper does) and at the same batch."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from bench import flops
from bench.machine import PeakTracker, planned_peak
from bench.models import decode, empty_cache, params_bytes, random_params
from bench.profiles import PAPER
from bench.report import kilo
from bench.runner import Context, Skip, guarded
from yoco_jax.model import cache_bytes
from yoco_jax.ops.attention_choice import pick


def budget_batch(cfg, weights: int, context: int, budget: int, cap: int) -> int:
    """The largest batch (at most `cap`) whose weights + cache fit `budget` bytes (0: none)."""
    per_row = cache_bytes(cfg, 1, context)
    return max(0, min(cap, (budget - weights) // per_row))


def decode_case(
    ctx: Context, cfg, params, weights: int, resident: int, context: int, batch: int
) -> dict:
    """Mean step time of `decode_steps` greedy steps at about `context` tokens of context."""
    steps = ctx.profile.decode_steps
    floor_s = flops.decode_bytes(cfg, batch, context) / ctx.bandwidth
    estimate = ctx.compile_s + 2 * steps * 3 * floor_s
    if not ctx.budget.allows("decode", estimate):
        raise Skip(f"time budget (needs ~{estimate:.0f} s)")
    need = resident + cache_bytes(cfg, batch, context)  # both models' weights stay loaded
    if ctx.device_memory and need > ctx.device_memory:
        raise Skip(f"does not fit: weights + cache = {need / 1e9:.1f} GB")
    tracker = PeakTracker(owned_before=weights)
    start = context - 2 * steps  # a warm call then a timed call, each `steps` tokens
    cache = empty_cache(cfg, batch, context, start)
    token = jnp.zeros((batch, 1), jnp.int32)
    t0 = time.perf_counter()
    fn = decode.lower(cfg, params, cache, token, steps=steps).compile()
    ctx.compile_s = time.perf_counter() - t0
    cache, token = jax.block_until_ready(fn(params, cache, token))
    t0 = time.perf_counter()
    cache, token = jax.block_until_ready(fn(params, cache, token))
    step_s = (time.perf_counter() - t0) / steps
    del cache
    return {
        "batch": batch,
        "step_ms": 1e3 * step_s,
        "tokens_per_s": batch / step_s,
        "floor_ms": 1e3 * floor_s,
        "floor_fraction": floor_s / step_s,
        "planned_peak": planned_peak(fn),
        "device_peak": tracker.peak(),
        "summary": f"batch {batch}: {1e3 * step_s:.2f} ms/step, {batch / step_s:.1f} tok/s",
    }


def run(ctx: Context) -> list[dict]:
    p = ctx.profile
    weights = {cfg.arch: params_bytes(cfg) for cfg in (p.yoco, p.transformer)}
    batches = {}  # (arch, context) -> same-memory batch
    for cfg in (p.yoco, p.transformer):
        for context in p.decode_lengths:
            batches[cfg.arch, context] = budget_batch(
                cfg, weights[cfg.arch], context, p.memory_budget, p.max_batch
            )
    params = {cfg.arch: random_params(cfg) for cfg in (p.yoco, p.transformer)}
    resident = sum(weights.values())
    results = {}
    # the same-memory pairs context by context first (a cut budget still leaves pairs), then
    # YOCO at the Transformer's batch
    cases = [
        (cfg, c, batches[cfg.arch, c]) for c in p.decode_lengths for cfg in (p.yoco, p.transformer)
    ]
    cases += [(p.yoco, c, batches["transformer", c]) for c in p.decode_lengths]
    for cfg, context, batch in cases:
        if (cfg.arch, context, batch) in results:
            continue
        if batch == 0:
            results[cfg.arch, context, 0] = {"note": "does not fit the memory budget"}
            continue
        label = f"decode {cfg.arch} {kilo(context)} batch {batch}"
        args = (params[cfg.arch], weights[cfg.arch], resident, context, batch)
        out = guarded(ctx, label, decode_case, ctx, cfg, *args)
        note = out.get("note", "")
        kernel_error = note.startswith("error") and "RESOURCE_EXHAUSTED" not in note
        q = jax.ShapeDtypeStruct((batch, 1, cfg.n_attn_heads, cfg.attn_head_dim), cfg.dtype)
        if kernel_error and pick(cfg.attention_impl, "decode", q, context) != "xla":
            # one failing kernel should not cost the comparison: retry on the XLA path
            xla = dataclasses.replace(cfg, attention_impl="xla")
            retry = guarded(ctx, label + " (XLA attention)", decode_case, ctx, xla, *args)
            again = f": {retry['note']}" if "note" in retry else ""
            out = {**retry, "note": f"XLA attention{again}; Pallas failed: {note}"}
        results[cfg.arch, context, batch] = out
    del params
    rows = []
    for context in sorted(p.decode_lengths):
        by, bt = batches["yoco", context], batches["transformer", context]
        for mode, yb in (("same memory", by), ("same batch", bt)):
            y = results.get(("yoco", context, yb), {"note": "not run"})
            t = results.get(("transformer", context, bt), {"note": "not run"})
            row = {"context": context, "mode": mode, "yoco": y, "transformer": t}
            row["paper"] = PAPER["throughput"].get(context) if mode == "same memory" else None
            if "tokens_per_s" in y and "tokens_per_s" in t:
                row["ratio"] = y["tokens_per_s"] / t["tokens_per_s"]
            if yb and bt:  # the same ratio at each model's bytes-over-bandwidth floor
                row["floor_ratio"] = (yb / flops.decode_bytes(p.yoco, yb, context)) / (
                    bt / flops.decode_bytes(p.transformer, bt, context)
                )
            rows.append(row)
    return rows
