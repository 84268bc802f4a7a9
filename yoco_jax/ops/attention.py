"""Softmax attention with explicit position masks (the XLA reference) and kernel dispatch.

q `[B, Tq, Hq, D]`, k and v `[B, Tk, Hkv, D]`; query head h reads kv head h // (Hq // Hkv).
`impl` is "xla" (this file) or "pallas" (yoco_jax.kernels); "auto" picks pallas on GPU/TPU.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

MAX_DECODE_QUERIES = 16
_KERNEL_OPTIONS: dict = {}


@contextlib.contextmanager
def kernel_options(**options):
    """Extra keywords for the Pallas kernels traced inside this block, e.g. `backend="tpu",
    interpret=True` to run the TPU kernels in interpret mode on CPU, or tile sizes."""
    saved = dict(_KERNEL_OPTIONS)
    _KERNEL_OPTIONS.update(options)
    try:
        yield
    finally:
        _KERNEL_OPTIONS.clear()
        _KERNEL_OPTIONS.update(saved)


def resolve_impl(impl: str) -> str:
    if impl == "auto":
        return "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
    return impl


def _use_kernel(impl: str, head_dim: int, kv_len: int) -> bool:
    """Pallas where the kernels apply: Triton tiles need a power-of-two head dim >= 16 and the
    decode kernel a cache of >= 16 entries; other shapes (tiny test models) take the XLA path."""
    fits = head_dim >= 16 and head_dim & (head_dim - 1) == 0 and kv_len >= 16
    return resolve_impl(impl) == "pallas" and fits


def _per_device(kernel, *args):
    """Runs a Pallas kernel on each device's shard under the context mesh (`jax.set_mesh`).

    A pallas_call cannot be partitioned by XLA, so it runs in `shard_map`: batch and heads split
    as the logical rules place `activation_batch` and `activation_heads` (data/fsdp and tensor
    by default); args are [B, T, H, D] arrays and then an optional [B] lengths vector.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(*args)
    batch, heads = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
    heads_spec = P(batch, None, heads, None)
    specs = tuple(heads_spec if a.ndim == 4 else P(batch) for a in args)
    return jax.shard_map(kernel, in_specs=specs, out_specs=heads_spec, check_vma=False)(*args)


def masked_attention(
    q: Float[Array, "B Tq Hq D"],
    k: Float[Array, "B Tk Hkv D"],
    v: Float[Array, "B Tk Hkv D"],
    mask: Bool[Array, "B Tq Tk"],
) -> Float[Array, "B Tq Hq D"]:
    """Plain softmax attention in float32; rows with no allowed key return finite garbage."""
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    logits = logits * d**-0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.reshape(b, tq, hq, d).astype(q.dtype)


def position_mask(
    q_pos: Int[Array, "B Tq"], kv_pos: Int[Array, "B Tk"], window: int | None = None
) -> Bool[Array, "B Tq Tk"]:
    """Causal (kv_pos <= q_pos), optionally windowed (kv_pos > q_pos - window).

    Negative kv positions mark empty slots.
    """
    qp, kp = q_pos[:, :, None], kv_pos[:, None, :]
    mask = (kp <= qp) & (kp >= 0)
    if window is not None:
        mask &= kp > qp - window
    return mask


def causal_attention(
    q: Float[Array, "B T Hq D"],
    k: Float[Array, "B T Hkv D"],
    v: Float[Array, "B T Hkv D"],
    *,
    window: int | None = None,
    impl: str = "xla",
) -> Float[Array, "B T Hq D"]:
    """Causal self/cross attention over a whole sequence (training, full forward)."""
    if _use_kernel(impl, q.shape[-1], k.shape[1]):
        from yoco_jax import kernels

        kernel = lambda q, k, v: kernels.flash_attention(
            q, k, v, causal=True, window=window, **_KERNEL_OPTIONS
        )
        return _per_device(kernel, q, k, v)
    b, t = q.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    return masked_attention(q, k, v, position_mask(pos, pos, window))


def cache_attention(
    q: Float[Array, "B Tq Hq D"],
    k_cache: Float[Array, "B S Hkv D"],
    v_cache: Float[Array, "B S Hkv D"],
    lengths: Int[Array, " B"],
    *,
    impl: str = "xla",
) -> Float[Array, "B Tq Hq D"]:
    """Few queries, the last Tq positions of each sequence, against its first `lengths` entries.

    The Pallas decode kernel serves up to `MAX_DECODE_QUERIES` queries; more use the XLA path.
    """
    if _use_kernel(impl, q.shape[-1], k_cache.shape[1]) and q.shape[1] <= MAX_DECODE_QUERIES:
        from yoco_jax import kernels

        options = {k: v for k, v in _KERNEL_OPTIONS.items() if k in ("backend", "interpret")}
        kernel = lambda *args: kernels.decode_attention(*args, **options)
        return _per_device(kernel, q, k_cache, v_cache, lengths)
    b, tq = q.shape[:2]
    q_pos = lengths[:, None] - tq + jnp.arange(tq)
    kv_pos = jnp.broadcast_to(jnp.arange(k_cache.shape[1]), (b, k_cache.shape[1]))
    kv_pos = jnp.where(kv_pos < lengths[:, None], kv_pos, -1)
    return masked_attention(q, k_cache, v_cache, position_mask(q_pos, kv_pos))
