"""`flash_attention`: the differentiable Pallas attention for training and prefill.

This module validates inputs, folds GQA query heads into rows, pads to the block sizes and picks
the kernel family (flash_attention_gpu.py: Triton; flash_attention_tpu.py: Mosaic TPU). The
kernels themselves see padded, folded arrays; padding and folding are plain XLA ops that JAX
differentiates, while the kernels carry a custom VJP (FlashAttention-2 backward from the saved
logsumexp).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from yoco_jax.kernels import flash_attention_gpu, flash_attention_tpu
from yoco_jax.kernels.common import (
    Masking,
    check_qkv,
    default_scale,
    fit_block,
    fold_queries,
    pad_axis,
    resolve_backend,
    resolve_interpret,
    round_up,
    unfold_queries,
)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes: rows (GQA-folded queries) x keys, for the forward and the backward kernels."""

    rows: int
    keys: int
    rows_bwd: int
    keys_bwd: int


DEFAULT_BLOCK_SIZES = {
    "gpu": BlockSizes(rows=128, keys=64, rows_bwd=64, keys_bwd=64),
    "tpu": BlockSizes(rows=128, keys=128, rows_bwd=128, keys_bwd=128),
}
_FAMILIES = {"gpu": flash_attention_gpu, "tpu": flash_attention_tpu}


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Everything static a kernel needs (hashable: it is a custom_vjp non-differentiable arg)."""

    masking: Masking
    sm_scale: float
    block_rows: int
    block_keys: int
    block_rows_bwd: int
    block_keys_bwd: int
    backend: str
    interpret: Any
    # The query offset and the first key are traced scalars (flash_attention_bounds.py).
    traced: bool = False


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _kernel_attention(q, k, v, bounds, cfg):
    return _FAMILIES[cfg.backend].forward(q, k, v, cfg, bounds)[0]


def _kernel_attention_fwd(q, k, v, bounds, cfg):
    out, lse = _FAMILIES[cfg.backend].forward(q, k, v, cfg, bounds)
    return out, (q, k, v, bounds, out, lse)


def _kernel_attention_bwd(cfg, residuals, d_out):
    q, k, v, bounds, out, lse = residuals
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1, keepdims=True)
    return *_FAMILIES[cfg.backend].backward(q, k, v, lse, delta, d_out, cfg, bounds), None


_kernel_attention.defvjp(_kernel_attention_fwd, _kernel_attention_bwd)


def flash_attention(
    q,
    k,
    v,
    *,
    causal=True,
    window=None,
    q_offset=None,
    kv_start=None,
    sm_scale=None,
    interpret=None,
    backend=None,
    block_sizes: BlockSizes | None = None,
):
    """Blockwise (flash) attention with GQA, bottom-right causal mask and optional window.

    q `[B, Tq, Hq, D]`, k/v `[B, Tk, Hkv, D]` with Hq % Hkv == 0 (query head h reads kv head
    h // (Hq // Hkv)). Query i sits at key position Tk - Tq + i; `causal` keeps keys at positions
    <= its own and `window=w` keys in (p - w, p] (flash_attn `window_size=(w - 1, 0)`).
    Softmax statistics are float32 whatever the input dtype. Returns `[B, Tq, Hq, D]` in q's dtype.

    q_offset / kv_start (causal only; int or traced int32 scalar; None: Tk - Tq / 0): query i
    sits at key position q_offset + i (any Tq, also before or past the keys) and the keys below
    kv_start do not exist (empty slots). A query that sees no key gets 0. A slice of a longer
    sequence passes the position of its first query (ops/context_kernels.py).

    backend: 'gpu' (Triton) | 'tpu' (Mosaic) | None (the default device's family, GPU on CPU).
    interpret: None (interpret unless the default device runs `backend`), True/False, or a
    `pltpu.InterpretParams` for the TPU family. block_sizes: tiles (defaults per backend).
    """
    batch, q_len, num_heads, kv_len, num_kv_heads, head_dim = check_qkv(
        q, k, v, what="flash_attention"
    )
    if window is not None and (not causal or int(window) < 1):
        raise ValueError(
            f"flash_attention: window={window} needs causal=True and window >= 1 (it keeps keys "
            "in (p - window, p])."
        )
    traced = q_offset is not None or kv_start is not None
    if traced and not causal:
        raise ValueError("flash_attention: q_offset / kv_start need causal=True.")
    if causal and q_len > kv_len and not traced:
        raise ValueError(
            f"flash_attention: causal attention needs Tq <= Tk (queries are the last Tq of Tk "
            f"positions); got Tq={q_len}, Tk={kv_len}."
        )
    backend = resolve_backend(backend)
    blocks = block_sizes or DEFAULT_BLOCK_SIZES[backend]
    num_rows = q_len * (num_heads // num_kv_heads)
    cfg = FlashConfig(
        masking=Masking(
            group=num_heads // num_kv_heads,
            offset=kv_len - q_len,
            kv_len=kv_len,
            causal=bool(causal),
            window=None if window is None else int(window),
        ),
        sm_scale=default_scale(sm_scale, head_dim),
        block_rows=fit_block(blocks.rows, num_rows),
        block_keys=fit_block(blocks.keys, kv_len),
        block_rows_bwd=fit_block(blocks.rows_bwd, num_rows),
        block_keys_bwd=fit_block(blocks.keys_bwd, kv_len),
        backend=backend,
        interpret=resolve_interpret(interpret, backend),
        traced=traced,
    )
    bounds = None
    if traced:
        # kv_start clipped into [0, Tk]: the key-range arithmetic assumes a non-negative start.
        start = jnp.clip(jnp.asarray(0 if kv_start is None else kv_start, jnp.int32), 0, kv_len)
        offset = jnp.asarray(kv_len - q_len if q_offset is None else q_offset, jnp.int32)
        bounds = jnp.stack([offset, start])
    rows_to = round_up(num_rows, math.lcm(cfg.block_rows, cfg.block_rows_bwd))
    keys_to = round_up(kv_len, math.lcm(cfg.block_keys, cfg.block_keys_bwd))
    # Triton tiles need power-of-two sizes >= 16; zero columns change no dot product.
    dim_to = fit_block(1 << 30, head_dim) if backend == "gpu" else head_dim

    rows = pad_axis(pad_axis(fold_queries(q, num_kv_heads), 2, rows_to), 3, dim_to)
    k = pad_axis(pad_axis(k, 1, keys_to), 3, dim_to)
    v = pad_axis(pad_axis(v, 1, keys_to), 3, dim_to)
    out = _kernel_attention(rows, k, v, bounds, cfg)
    return unfold_queries(out[..., :head_dim], q_len, num_heads)
