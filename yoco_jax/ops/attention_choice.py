"""What `attention_impl="auto"` runs, per platform and shape: the one resolver (`pick`) that
ops/attention.py, the context-parallel kernels, train/memory.py and bench/ ask. The table is in
docs/benchmarks-attention.md with the measurements behind it.

Kinds of attention call:
- "causal": a whole sequence, causal (training, a one-chunk prefill, YOCO's cross-decoder in
  training): cuDNN on GPU where it supports the call (measured 1.4x faster than our Triton flash
  forward and forward+backward at 32K on an H100), else our Pallas flash kernel;
- "decode": <= 16 queries against a cache: our split-K Pallas decode kernel on GPU/TPU;
- "chunk": a prefill chunk (> 16 queries) against a cache: our Pallas chunk kernel on GPU/TPU,
  the blocked XLA path (ops/chunked_attention.py) on CPU.
CPU always runs XLA; shapes the Pallas tiles cannot take (head_dim not a power of two >= 16,
fewer than 16 keys) run XLA everywhere.

An earlier second resolver answered "pallas" for every GPU call; for bf16 causal attention this
one answers "cudnn", which was measured (above), so it is the one kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("causal", "decode", "chunk")
IMPLS = ("xla", "pallas", "cudnn")
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128


def pallas_fits(head_dim: int, kv_len: int | None = None) -> bool:
    """Triton tiles need a power-of-two head dim >= 16; the cache kernels >= 16 keys."""
    pow2 = head_dim >= 16 and head_dim & (head_dim - 1) == 0
    return pow2 and (kv_len is None or kv_len >= 16)


def cudnn_supports(dtype, head_dim: int, window: int | None) -> bool:
    """cuDNN flash attention through `jax.nn.dot_product_attention`: half precision, head dim a
    multiple of 8 up to 128. Windows stay on our kernel until cuDNN's sliding window (cuDNN
    >= 9.2) is measured on the card."""
    half = jnp.dtype(dtype).name in CUDNN_DTYPES
    return half and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM and window is None


def choose_attention(
    platform: str,
    kind: str,
    dtype,
    head_dim: int,
    window: int | None = None,
    kv_len: int | None = None,
) -> str:
    """Which implementation ("xla", "pallas", "cudnn") runs one call on `platform` ("cpu", "gpu",
    "tpu" as `jax.default_backend()` names it). `kv_len`: keys (or cache entries) it reads."""
    if kind not in KINDS:
        raise ValueError(f"choose_attention: kind must be one of {KINDS}, got {kind!r}.")
    if platform not in ("gpu", "tpu") or not pallas_fits(head_dim, kv_len):
        return "xla"
    if platform == "gpu" and kind == "causal" and cudnn_supports(dtype, head_dim, window):
        return "cudnn"
    return "pallas"


def pick(impl: str, kind: str, q, kv_len: int, window: int | None = None) -> str:
    """`impl` itself unless it is "auto"; then `choose_attention` for this call on the default
    backend. q `[B, Tq, Hq, Dh]`: an array or a `jax.ShapeDtypeStruct` (only its dtype and head
    dim are read)."""
    if impl != "auto":
        return impl
    return choose_attention(jax.default_backend(), kind, q.dtype, q.shape[-1], window, kv_len)


def cudnn_causal_attention(q, k, v):
    """Causal GQA attention by cuDNN (q `[B, T, Hq, Dh]`, k/v `[B, T, Hkv, Dh]`, half
    precision)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
