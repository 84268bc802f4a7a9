"""Prefill latency against length: YOCO (chunkwise self-decoder, cross-decoder only at each
chunk's last token) against the Transformer (every layer over every token), same size."""

from __future__ import annotations

import time

import jax

from bench import flops
from bench.machine import PeakTracker, compiled_flops, temp_bytes
from bench.models import empty_cache, extend, needs_fresh, params_bytes, random_params
from bench.profiles import PAPER
from bench.report import kilo
from bench.runner import Context, Skip, guarded
from yoco_jax.model import cache_bytes, init_cache
from yoco_jax.ops.attention_choice import pick


def prefill_case(
    ctx: Context, cfg, params, weights: int, other: int, length: int, chunk: int, cache_len: int
) -> dict:
    """Times one prompt of `length` tokens through `extend` in chunks (best of up to 3 runs) into
    a cache of `cache_len` >= length slots; `other`: bytes the other model keeps loaded."""
    chunk = min(chunk, length)
    if length % chunk:
        raise ValueError(f"length {length} must be a multiple of the prefill chunk {chunk}")
    q = jax.ShapeDtypeStruct((1, chunk, cfg.n_attn_heads, cfg.attn_head_dim), cfg.dtype)
    flash = pick(cfg.attention_impl, "chunk", q, cache_len) == "pallas"
    executed = flops.prefill_flops(cfg, length, chunk, True, cache_len, flash)
    minimum = flops.prefill_flops(cfg, length, chunk, executed=False)
    n_chunks = length // chunk
    kinds = [i == 0 and needs_fresh(cfg) for i in range(n_chunks)]  # fresh flag per chunk
    keys = {fresh: (cfg, chunk, cache_len, fresh) for fresh in set(kinds)}
    n_compiles = sum(key not in _compiled for key in keys.values())
    estimate = n_compiles * ctx.compile_s + 2 * executed / ctx.matmul_rate
    if not ctx.budget.allows("prefill", estimate):
        raise Skip(f"time budget (needs ~{estimate:.0f} s)")
    need = other + weights + cache_bytes(cfg, 1, cache_len)
    if ctx.device_memory and need > ctx.device_memory:
        raise Skip(f"does not fit: weights + cache = {need / 1e9:.1f} GB")

    tracker = PeakTracker(owned_before=weights)
    tokens = jax.random.randint(jax.random.key(1), (1, length), 0, cfg.vocab_size)
    chunks = [tokens[:, i : i + chunk] for i in range(0, length, chunk)]
    cache_shape = jax.eval_shape(lambda: init_cache(cfg, 1, cache_len))
    t0 = time.perf_counter()
    fns = {}
    for fresh, key in keys.items():  # compiled once per shape: YOCO reuses one for every length
        if key not in _compiled:
            _compiled[key] = extend.lower(
                cfg, params, chunks[0], cache_shape, fresh=fresh
            ).compile()
        fns[fresh] = _compiled[key]
    if n_compiles:
        ctx.compile_s = (time.perf_counter() - t0) / n_compiles
    # XLA's plan, with the cache counted at `length` slots (the cache may be allocated longer)
    temps = [temp_bytes(f) for f in fns.values()]
    planned = None if None in temps else weights + cache_bytes(cfg, 1, length) + max(temps)
    if ctx.device_memory and planned and other + planned > ctx.device_memory:
        raise Skip(f"does not fit: XLA plans {planned / 1e9:.1f} GB")

    def run() -> float:
        cache = jax.block_until_ready(empty_cache(cfg, 1, cache_len, 0))
        t = time.perf_counter()
        for i, c in enumerate(chunks):
            logits, cache = fns[kinds[i]](params, c, cache)
        jax.block_until_ready((logits, cache))
        return time.perf_counter() - t

    times = [run()]
    while len(times) < 3 and times[-1] < 2.0:
        times.append(run())
    seconds = min(times)
    xla = {fresh: compiled_flops(f) for fresh, f in fns.items()}
    xla_total = None if None in xla.values() else sum(xla[k] for k in kinds)
    return {
        "seconds": seconds,
        "runs": len(times),
        "flops_min": minimum,
        "flops_executed": executed,
        "flops_xla": xla_total,
        "floor_fraction": minimum / ctx.matmul_rate / seconds,
        "planned_peak": planned,
        "device_peak": tracker.peak(),
        "summary": f"{seconds:.3f} s ({len(times)} runs)",
    }


_compiled = {}  # (cfg, chunk shape, cache length, fresh) -> compiled extend


def run(ctx: Context) -> list[dict]:
    """Both models side by side, length by length (so a cut budget still leaves pairs)."""
    p = ctx.profile
    models = {
        cfg.arch: (cfg, random_params(cfg), params_bytes(cfg)) for cfg in (p.yoco, p.transformer)
    }
    chunks = {"yoco": p.yoco_prefill_chunk, "transformer": p.transformer_prefill_chunk}
    longest = max(p.prefill_lengths)
    results = {}
    total = sum(m[2] for m in models.values())
    for length in p.prefill_lengths:
        for arch, (cfg, params, weights) in models.items():
            # YOCO writes into one cache of the longest length (the cross-decoder reads only the
            # filled part), so one compiled chunk serves every length; the Transformer's cache
            # is the prompt's length
            cache_len = longest if arch == "yoco" else length
            label = f"prefill {arch} {kilo(length)}"
            results[arch, length] = guarded(
                ctx,
                label,
                prefill_case,
                ctx,
                cfg,
                params,
                weights,
                total - weights,
                length,
                chunks[arch],
                cache_len,
            )
    _compiled.clear()
    del models
    rows = []
    for length in p.prefill_lengths:
        y, t = results["yoco", length], results["transformer", length]
        row = {"length": length, "yoco": y, "transformer": t, "paper": PAPER["prefill"].get(length)}
        row["flop_ratio_min"] = flops.prefill_flops(
            p.transformer, length, p.transformer_prefill_chunk, executed=False
        ) / flops.prefill_flops(p.yoco, length, min(p.yoco_prefill_chunk, length), executed=False)
        if "seconds" in y and "seconds" in t:
            row["speedup"] = t["seconds"] / y["seconds"]
            row["flop_ratio_executed"] = t["flops_executed"] / y["flops_executed"]
        if y.get("planned_peak") and t.get("planned_peak"):
            row["memory_ratio"] = t["planned_peak"] / y["planned_peak"]
        rows.append(row)
    return rows
