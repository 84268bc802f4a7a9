"""Inference memory of yoco-3b against transformer-3b (bf16, batch 1) from 32K to 1M tokens: the
exact pytree sizes of weights and cache (jax.eval_shape: nothing is allocated), and whether they
fit this device. Measured peaks of the timed cases are in the prefill and decode tables."""

from __future__ import annotations

import jax

from bench.models import param_shapes
from bench.profiles import MEMORY_LENGTHS, PAPER, memory_configs
from bench.runner import Context
from yoco_jax.model import cache_bytes, init_cache
from yoco_jax.model.cache import tree_bytes


def sizes(cfg, length: int) -> dict:
    cache = tree_bytes(jax.eval_shape(lambda: init_cache(cfg, 1, length)))
    if cache != cache_bytes(cfg, 1, length):  # two independent counts must agree
        raise AssertionError(f"{cfg.arch} cache at {length}: pytree {cache} != formula")
    weights = tree_bytes(param_shapes(cfg))
    return {"weights": weights, "cache": cache, "total": weights + cache}


def run(ctx: Context) -> list[dict]:
    yoco, transformer = memory_configs()
    limit = ctx.device_memory or 80 * 10**9  # the paper's H100-80GB where the backend says nothing
    rows = []
    for length in MEMORY_LENGTHS:
        y, t = sizes(yoco, length), sizes(transformer, length)
        rows.append(
            {
                "length": length,
                "yoco": y,
                "transformer": t,
                "ratio": t["total"] / y["total"],
                "cache_ratio": t["cache"] / y["cache"],
                "paper": PAPER["memory"][length],
                "transformer_fits": t["total"] <= limit,
                "yoco_fits": y["total"] <= limit,
                "limit": limit,
            }
        )
    ctx.log("memory: pytree sizes of yoco-3b / transformer-3b done")
    return rows
