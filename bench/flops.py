"""Analytic FLOP and byte counts of both architectures (matmuls only: 2 FLOPs per multiply-add).

`executed` counts what this implementation computes: the XLA causal path scores a whole (masked)
square, a chunk against the cache scores whole 512-key blocks up to its end
(ops/chunked_attention.py), the chunkwise retention computes full c x c blocks.
`minimum` counts what the model needs: causal attention scores each query only against the keys
before it. Cross-checked against XLA's cost_analysis() in tests/package/test_bench.py.
"""

from __future__ import annotations

import jax.numpy as jnp

from yoco_jax.config import ModelConfig
from yoco_jax.ops.blocked_attention import BLOCK_KEYS


def _ffn(cfg: ModelConfig) -> int:
    return 3 * cfg.dim * cfg.hidden_dim


def _kv_width(cfg: ModelConfig) -> int:
    return cfg.n_attn_kv_heads * cfg.attn_head_dim


def layer_params(cfg: ModelConfig, kind: str) -> int:
    """Matmul parameters of one layer: "retention", "cross" or "attention"."""
    d = cfg.dim
    if kind == "retention":
        return 5 * d * d + d * cfg.n_self_heads + _ffn(cfg)
    if kind == "cross":
        return 2 * d * d + _ffn(cfg)
    return 2 * d * d + 2 * d * _kv_width(cfg) + _ffn(cfg)


def param_count(cfg: ModelConfig) -> dict:
    """{'body': matmul params of the layers, 'embed': V x D, 'head': D x V}."""
    if cfg.arch == "transformer":
        body = cfg.n_layers * layer_params(cfg, "attention")
    else:
        body = cfg.half_layers * (layer_params(cfg, "retention") + layer_params(cfg, "cross"))
        body += 2 * cfg.dim * _kv_width(cfg)
    return {"body": body, "embed": cfg.vocab_size * cfg.dim, "head": cfg.dim * cfg.vocab_size}


def _attention(cfg: ModelConfig, pairs: float) -> float:
    """Scores and weighted sum of `pairs` (query, key) pairs in one layer."""
    return 4 * cfg.n_attn_heads * cfg.attn_head_dim * pairs


def _retention(cfg: ModelConfig, tokens: int) -> float:
    """Chunkwise retention over `tokens` (padded to whole chunks), one layer."""
    c = min(cfg.chunk_size, tokens)
    padded = -(-tokens // c) * c
    return 4 * cfg.dim * (c + cfg.self_head_dim) * padded


def _causal_pairs(t: int) -> float:
    return t * (t + 1) / 2


def prefill_flops(
    cfg: ModelConfig,
    length: int,
    chunk: int,
    executed: bool = True,
    cache_len: int | None = None,
    flash: bool = False,
) -> float:
    """One sequence of `length` tokens consumed by `extend` in chunks of `chunk` into a cache of
    `cache_len` (default `length`) slots, logits at each chunk's last token (bench.prefill).

    Executed counts follow the kernels: `flash` (Pallas) skips masked blocks and unfilled cache;
    the XLA path scores a fresh chunk's full square, and a later chunk against whole key blocks
    of the cache up to its end (the blocked path stops at the longest row).
    """
    cache_len = cache_len or length
    n = -(-length // chunk)
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    ends = [sum(sizes[: i + 1]) for i in range(n)]
    p = param_count(cfg)
    head = n * 2 * p["head"]
    if cfg.arch == "transformer":
        if not executed or flash:  # flash: causal first chunk, chunk kernel up to each end
            pairs = _causal_pairs(length)
        else:
            block = min(BLOCK_KEYS, cache_len)
            seen = [min(-(-end // block) * block, cache_len) for end in ends[1:]]
            pairs = sizes[0] ** 2 + sum(c * keys for c, keys in zip(sizes[1:], seen, strict=True))
        per_layer = 2 * layer_params(cfg, "attention") * length + _attention(cfg, pairs)
        return cfg.n_layers * per_layer + head
    self_dec = cfg.half_layers * (
        2 * layer_params(cfg, "retention") * length + sum(_retention(cfg, c) for c in sizes)
    )
    kv = 2 * 2 * cfg.dim * _kv_width(cfg) * length
    # the cross-decoder runs at each chunk's last token, against the filled cache (decode
    # kernel) or the whole masked cache (XLA path)
    cross_keys = n * cache_len if executed and not flash else sum(ends)
    cross = cfg.half_layers * (2 * layer_params(cfg, "cross") * n + _attention(cfg, cross_keys))
    return self_dec + kv + cross + head


def forward_flops(cfg: ModelConfig, length: int) -> float:
    """Full forward over `length` tokens with logits everywhere (training), causal minimum."""
    p = param_count(cfg)
    pairs = _causal_pairs(length)
    if cfg.arch == "transformer":
        attn = cfg.n_layers * _attention(cfg, pairs)
    else:
        attn = cfg.half_layers * (_retention(cfg, length) + _attention(cfg, pairs))
    return 2 * (p["body"] + p["head"]) * length + attn


def train_flops(cfg: ModelConfig, batch: int, length: int) -> float:
    """One train step: forward + backward (twice the forward), causal minimum."""
    return 3 * batch * forward_flops(cfg, length)


def weight_bytes(cfg: ModelConfig, itemsize: int) -> int:
    p = param_count(cfg)
    return (p["body"] + p["embed"] + p["head"]) * itemsize


def decode_bytes(cfg: ModelConfig, batch: int, context: int) -> float:
    """Bytes one decode step must read from memory: the weights once (embedding rows aside) and
    every cache entry each attention layer reads; YOCO's 13 cross layers each re-read the one
    global K/V, its retention states are read and written in float32."""
    item = jnp.dtype(cfg.dtype).itemsize
    p = param_count(cfg)
    weights = (p["body"] + p["head"]) * jnp.dtype(cfg.param_dtype).itemsize
    kv_token = 2 * _kv_width(cfg) * item
    if cfg.arch == "transformer":
        return weights + cfg.n_layers * batch * context * kv_token
    states = cfg.half_layers * batch * cfg.n_self_heads * cfg.self_head_dim**2 * 4 * 2
    return weights + cfg.half_layers * batch * context * kv_token + states
