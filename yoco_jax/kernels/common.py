"""Pieces shared by the attention kernels of both families (GPU/Triton and TPU/Mosaic).

GQA layout. The kernels see the queries of one kv head as a single matrix of "rows": q
`[B, Tq, Hq, D]` is viewed as `[B, Tq, Hkv, G, D]` and transposed to `[B, Hkv, Tq * G, D]`, row
`r = t * G + g` holding query head `h * G + g` at time `t`. One program therefore multiplies a block
of rows from all G query heads of a group with each K/V block it loads: K/V are read once per group
and never repeated in memory, and the backward accumulates dK/dV of the whole group in one program.

Positions. Query time `t` sits at key position `offset + t` (`offset = Tk - Tq`, flash_attn's
bottom-right causal alignment). Row r sees key position k when `k <= offset + r // G` (causal) and
`k > offset + r // G - window`; both are written with multiplications only (`r >= (k - offset) * G`)
so no kernel divides vectors by G.

Scores are kept in base 2 (`scale = sm_scale * log2(e)`, `exp2`), and row statistics (max `m`, sum
`denom`, logsumexp) are float32 arrays of shape `[rows, 1]`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

LOG2E = math.log2(math.e)
BACKENDS = ("gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Masking:
    """Static description of which keys a row may see (see the module docstring).

    group: query heads per kv head (G). offset: Tk - Tq (a traced int32 scalar in the chunk
    kernel, one per sequence). kv_len: number of real keys (keys at or beyond it are padding).
    causal / window: as in `flash_attention`.
    """

    group: int
    offset: int | jax.Array
    kv_len: int
    causal: bool
    window: int | None


def visible(rows, keys, masking: Masking, offset=None):
    """Boolean mask `rows x keys` (broadcasting int32 arrays): True where the row sees the key.

    `offset` overrides `masking.offset` with a traced value (decode: one offset per sequence).
    """
    offset = masking.offset if offset is None else offset
    group = masking.group
    if not masking.causal:
        # Causal rows never reach the padded keys (they lie after the last query); others must.
        return keys < masking.kv_len
    mask = rows >= (keys - offset) * group
    if masking.window is not None:
        mask &= rows < (keys - offset + masking.window) * group
    return mask


def block_mask(row0, key0, block_rows, block_keys, masking: Masking, offset=None):
    """`visible` for the tile of rows `[row0, row0 + block_rows)` x keys `[key0, key0 + ...)`."""
    shape = (block_rows, block_keys)
    rows = row0 + lax.broadcasted_iota(jnp.int32, shape, 0)
    keys = key0 + lax.broadcasted_iota(jnp.int32, shape, 1)
    return visible(rows, keys, masking, offset)


def _cdiv(x, d):
    """Ceil division of a non-negative traced scalar (lax.div: `//` does not lower in kernels)."""
    return lax.div(x + (d - 1), d)


def key_block_range(row0, block_rows, block_keys, num_key_blocks, masking: Masking):
    """[first, end) of the key blocks that rows `[row0, row0 + block_rows)` can see."""
    if not masking.causal:
        return 0, num_key_blocks
    last_time = lax.div(row0 + (block_rows - 1), masking.group)
    end = jnp.minimum(_cdiv(masking.offset + last_time + 1, block_keys), num_key_blocks)
    if masking.window is None:
        return 0, end
    first_key = masking.offset + lax.div(row0, masking.group) - masking.window + 1
    return lax.div(jnp.maximum(first_key, 0), block_keys), end


def unmasked_key_blocks(row0, block_rows, block_keys, first, end, masking: Masking):
    """[a, b) inside [first, end): key blocks every row of the block sees entirely (no mask
    needed). Blocks of [first, a) and [b, end) straddle the band's edges and need the mask."""
    if not masking.causal:
        return first, jnp.minimum(masking.kv_len // block_keys, end)
    first_time = lax.div(row0, masking.group)
    full_end = lax.div(masking.offset + first_time + 1, block_keys)
    full_first = first
    if masking.window is not None:
        last_time = lax.div(row0 + (block_rows - 1), masking.group)
        last_start = jnp.maximum(masking.offset + last_time - masking.window + 1, 0)
        full_first = _cdiv(last_start, block_keys)
    a = jnp.clip(full_first, first, end)
    return a, jnp.clip(full_end, a, end)


def row_block_range(key0, block_keys, block_rows, num_row_blocks, masking: Masking):
    """[first, end) of the row blocks that can see some key of `[key0, key0 + block_keys)`."""
    if not masking.causal:
        return 0, num_row_blocks
    group, offset = masking.group, masking.offset
    first = lax.div(jnp.maximum((key0 - offset) * group, 0), block_rows)
    if masking.window is None:
        return first, num_row_blocks
    end_row = jnp.maximum((key0 + block_keys - 1 - offset + masking.window) * group, 0)
    return first, jnp.minimum(_cdiv(end_row, block_rows), num_row_blocks)


def matmul(a, b, *, trans_a=False, trans_b=False):
    """2-D matmul with float32 accumulation; lowers on Triton, Mosaic TPU and in interpret mode."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def online_softmax_step(acc, m, denom, s, v):
    """Fold one tile of base-2 scores into the running (acc, max, sum) of its rows.

    acc `[R, D]` f32, m/denom `[R, 1]` f32, s `[R, K]` f32 (masked entries -inf), v `[K, D]`.
    A row whose keys are all masked so far keeps m = -inf, denom = 0, acc = 0 (no NaN).
    """
    m_next = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    correction = jnp.exp2(m - m_safe)
    p = jnp.exp2(s - m_safe)
    denom_next = correction * denom + jnp.sum(p, axis=1, keepdims=True)
    acc_next = correction * acc + matmul(p.astype(v.dtype), v)
    return acc_next, m_next, denom_next


def fold_queries(q, num_kv_heads):
    """q `[B, Tq, Hq, D]` -> rows `[B, Hkv, Tq * G, D]` (row t * G + g = head h * G + g at t)."""
    batch, q_len, num_heads, head_dim = q.shape
    group = num_heads // num_kv_heads
    q = q.reshape(batch, q_len, num_kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
    return q.reshape(batch, num_kv_heads, q_len * group, head_dim)


def unfold_queries(rows, q_len, num_heads):
    """Inverse of `fold_queries`: rows `[B, Hkv, >= Tq * G, D]` -> `[B, Tq, Hq, D]`."""
    batch, num_kv_heads, _, head_dim = rows.shape
    group = num_heads // num_kv_heads
    rows = rows[:, :, : q_len * group].reshape(batch, num_kv_heads, q_len, group, head_dim)
    return rows.transpose(0, 2, 1, 3, 4).reshape(batch, q_len, num_heads, head_dim)


def pad_axis(x, axis, size):
    """Zero-pad axis `axis` of x up to `size` (no copy when it already has that size)."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def round_up(n, multiple):
    return -(-n // multiple) * multiple


def fit_block(block, n):
    """Largest useful block for a length-n axis: `block`, or less (a power of two >= 16) if n is
    small. Powers of two >= 16 suit Triton (tl.dot) and Mosaic (sublane multiples of 8)."""
    return min(block, max(16, 1 << max(n - 1, 0).bit_length()))


def resolve_backend(backend):
    """'gpu' | 'tpu' | None (the family of the default device; GPU kernels when on CPU)."""
    if backend is None:
        backend = "tpu" if jax.default_backend() == "tpu" else "gpu"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}.")
    return backend


def resolve_interpret(interpret, backend):
    """None -> interpret only when the default device cannot run `backend`'s kernels.

    TPU kernels are interpreted with TPU semantics (`pltpu.InterpretParams`), also for True.
    """
    if interpret is None:
        interpret = jax.default_backend() != backend
    if backend == "tpu" and interpret is True:
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams()
    return interpret


def default_scale(sm_scale, head_dim):
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)


def check_qkv(q, k, v, *, what, int8_kv=False):
    """Shape checks shared by both entry points; returns (B, Tq, Hq, Tk, Hkv, D). `int8_kv`:
    k and v are an int8 cache (kernels/int8.py), q in any float dtype."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"{what}: q, k, v must be [batch, time, heads, head_dim]; got {q.shape}, {k.shape}, "
            f"{v.shape}."
        )
    if k.shape != v.shape:
        raise ValueError(f"{what}: k and v must have the same shape; got {k.shape}, {v.shape}.")
    batch, q_len, num_heads, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"{what}: k/v {k.shape} must share batch and head_dim with q {q.shape}.")
    num_kv_heads = k.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(
            f"{what}: query heads ({num_heads}) must be a multiple of kv heads ({num_kv_heads})."
        )
    if int8_kv and not k.dtype == v.dtype == jnp.int8:
        raise ValueError(
            f"{what}: scales given, so k and v must be int8; got {k.dtype}, {v.dtype}."
        )
    if not int8_kv and not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"{what}: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype} (cast "
            "them to one compute dtype first)."
        )
    return batch, q_len, num_heads, k.shape[1], num_kv_heads, head_dim
