"""Softmax attention with explicit position masks (the XLA reference) and kernel dispatch.

q `[B, Tq, Hq, D]`, k and v `[B, Tk, Hkv, D]`; query head h reads kv head h // (Hq // Hkv).
`impl` is "xla" (this file) or "pallas" (yoco_jax.kernels); "auto" asks ops/attention_choice.py.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int, Shaped

from yoco_jax.kernels.int8 import dequantize
from yoco_jax.ops import attention_choice
from yoco_jax.ops.chunked_attention import chunked_attention

MAX_DECODE_QUERIES = 16


def resolve_impl(impl: str) -> str:
    if impl == "auto":
        return "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
    return impl


def _use_kernel(impl: str, head_dim: int, kv_len: int) -> bool:
    """Pallas where the kernels apply: Triton tiles need a power-of-two head dim >= 16 and the
    decode kernel a cache of >= 16 entries; other shapes (tiny test models) take the XLA path."""
    fits = head_dim >= 16 and head_dim & (head_dim - 1) == 0 and kv_len >= 16
    return resolve_impl(impl) == "pallas" and fits


def _mesh_axes_size(mesh, axes) -> int:
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[name] for name in names)


def _where_divides(mesh, axes, size: int):
    """`axes` if they split `size` evenly, else None (that dimension is then replicated)."""
    return axes if axes is not None and size % _mesh_axes_size(mesh, axes) == 0 else None


def _per_device(kernel, *args):
    """Runs a Pallas kernel on each device's shard under the context mesh (`jax.set_mesh`).

    A pallas_call cannot be partitioned by XLA, so it runs in `shard_map`: batch and heads split
    as the logical rules place `activation_batch` and `activation_heads` (data/fsdp and tensor
    by default); args are q, k, v [B, T, H, D] and then an optional [B] lengths vector.

    Every head count the parameter rules accept runs: query heads that do not divide the head
    axes are not split (each device computes them all); kv heads that do not divide (2 kv heads
    over tensor=4) arrive whole and each device gathers the ones its query heads read, repeated
    so the local grouping is even. A batch that does not divide is replicated likewise.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(*args)
    q, k = args[0], args[1]
    batch, heads = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
    batch = _where_divides(mesh, batch, q.shape[0])
    heads = _where_divides(mesh, heads, q.shape[2])
    kv_heads = _where_divides(mesh, heads, k.shape[2])
    q_spec, kv_spec = P(batch, None, heads, None), P(batch, None, kv_heads, None)
    specs = (q_spec, kv_spec, kv_spec) + (P(batch),) * (len(args) - 3)
    if heads is not None and kv_heads is None:
        kernel = _with_local_kv_heads(kernel, heads, _mesh_axes_size(mesh, heads), k.shape[2])
    return jax.shard_map(kernel, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)


def _with_local_kv_heads(kernel, axes, n: int, hkv: int):
    """Wraps `kernel` to take all `hkv` kv heads and keep the ones this device's query heads read.

    Query heads split n ways read kv heads repeated r = n / gcd(hkv, n) times (hkv * r heads,
    which n divides and which divide the query heads): device i keeps repeated heads
    [i m, (i + 1) m), m = hkv r / n, that is original heads (i m + j) // r. Gradients flow back
    through the gather and shard_map sums them over `axes`.
    """
    r = n // math.gcd(hkv, n)
    m = hkv * r // n

    def local(q, k, v, *rest):
        index = (jax.lax.axis_index(axes) * m + jnp.arange(m)) // r
        return kernel(q, jnp.take(k, index, axis=2), jnp.take(v, index, axis=2), *rest)

    return local


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
    backend: str | None = None,
    interpret: bool | None = None,
) -> Float[Array, "B T Hq D"]:
    """Causal self/cross attention over a whole sequence (training, full forward).
    `backend`, `interpret`: the Pallas kernels' (ModelConfig.kernel_options)."""
    impl = attention_choice.pick(impl, "causal", q, k.shape[1], window)
    if impl == "cudnn":
        return _per_device(attention_choice.cudnn_causal_attention, q, k, v)
    if _use_kernel(impl, q.shape[-1], k.shape[1]):
        from yoco_jax import kernels

        kernel = lambda q, k, v: kernels.flash_attention(
            q, k, v, causal=True, window=window, backend=backend, interpret=interpret
        )
        return _per_device(kernel, q, k, v)
    b, t = q.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    return masked_attention(q, k, v, position_mask(pos, pos, window))


def cache_attention(
    q: Float[Array, "B Tq Hq D"],
    k_cache: Shaped[Array, "B S Hkv D"],
    v_cache: Shaped[Array, "B S Hkv D"],
    lengths: Int[Array, " B"],
    *,
    window: int | None = None,
    impl: str = "xla",
    backend: str | None = None,
    interpret: bool | None = None,
    k_scale: Float[Array, "B S Hkv"] | None = None,
    v_scale: Float[Array, "B S Hkv"] | None = None,
) -> Float[Array, "B Tq Hq D"]:
    """The last Tq positions of each sequence against its first `lengths` entries (`window`:
    as in `causal_attention`; `backend`, `interpret`: the Pallas kernels').
    `k_scale`, `v_scale`: the caches are int8 (kernels/int8.py), dequantized to q's dtype where
    read (in the kernels and the blocked path one key block at a time; whole on a mesh).

    Up to `MAX_DECODE_QUERIES` queries (decode) run the split-K Pallas decode kernel (no window)
    or the masked XLA path; a prefill chunk runs the Pallas chunk kernel or the blocked XLA
    path of ops/chunked_attention.py (memory independent of the cache length).
    All compute in the cache's dtype: q is cast to it (a bfloat16 cache read by a float32 model,
    or the reverse, never copies the cache) and the output back to q's dtype.
    """
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    mesh = jax.sharding.get_abstract_mesh()
    if k_scale is not None and not (mesh.empty or mesh.size == 1):  # _per_device splits 4 args
        k_cache, v_cache = (
            dequantize(k_cache, k_scale, q.dtype),
            dequantize(v_cache, v_scale, q.dtype),
        )
        scales = {"k_scale": None, "v_scale": None}
    out_dtype = q.dtype
    q = q if k_cache.dtype == jnp.int8 else q.astype(k_cache.dtype)
    decode = q.shape[1] <= MAX_DECODE_QUERIES
    impl = attention_choice.pick(impl, "decode" if decode else "chunk", q, k_cache.shape[1], window)
    if _use_kernel(impl, q.shape[-1], k_cache.shape[1]):
        from yoco_jax import kernels

        options = {"backend": backend, "interpret": interpret, **scales}
        if decode and window is None:
            kernel = lambda *args: kernels.decode_attention(*args, **options)
        else:
            kernel = lambda *args: kernels.chunk_attention(*args, window=window, **options)
        return _per_device(kernel, q, k_cache, v_cache, lengths).astype(out_dtype)
    if not decode:
        out = chunked_attention(q, k_cache, v_cache, lengths, window=window, **scales)
        return out.astype(out_dtype)
    if k_scale is not None:
        k_cache, v_cache = (
            dequantize(k_cache, k_scale, q.dtype),
            dequantize(v_cache, v_scale, q.dtype),
        )
    b, tq = q.shape[:2]
    q_pos = lengths[:, None] - tq + jnp.arange(tq)
    kv_pos = jnp.broadcast_to(jnp.arange(k_cache.shape[1]), (b, k_cache.shape[1]))
    kv_pos = jnp.where(kv_pos < lengths[:, None], kv_pos, -1)
    out = masked_attention(q, k_cache, v_cache, position_mask(q_pos, kv_pos, window))
    return out.astype(out_dtype)
