"""Pallas attention kernels against the XLA reference, on CPU in interpret mode.

Both kernel families run: 'gpu' (Triton kernels, interpret=True) and 'tpu' (Mosaic kernels with
TPU semantics, pltpu.InterpretParams). Sizes are tiny and deliberately not multiples of the blocks.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoco_jax.kernels import BlockSizes, decode_attention, flash_attention
from yoco_jax.kernels.decode_attention import split_plan
from yoco_jax.kernels.reference import attention_reference, decode_attention_reference

SMALL_BLOCKS = BlockSizes(rows=16, keys=16, rows_bwd=16, keys_bwd=32)


def _relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def _random_qkv(seed, batch, q_len, kv_len, num_heads, num_kv_heads, head_dim, dtype):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, q_len, num_heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, kv_len, num_kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, kv_len, num_kv_heads, head_dim), dtype)
    d_out = jax.random.normal(keys[3], q.shape, dtype)
    return q, k, v, d_out


def _value_and_grads(attention, q, k, v, d_out):
    out, vjp = jax.vjp(attention, q, k, v)
    return (out, *vjp(d_out))


# (batch, Tq, Tk, Hq, Hkv, D, causal, window): GQA ratios 1, 3 and 8, Tq < Tk (bottom-right
# causal), lengths that are not multiples of the 16/32 blocks, windows inside and across blocks.
FLASH_CASES = {
    "gqa3": (2, 37, 37, 6, 2, 16, True, None),
    "gqa1_q_shorter": (1, 21, 45, 2, 2, 32, True, None),
    "gqa8_window": (1, 29, 29, 8, 1, 16, True, 7),
    "gqa3_q_shorter_window": (1, 19, 50, 3, 1, 16, True, 12),
    "gqa2_long_window": (1, 70, 70, 4, 2, 16, True, 40),
    "not_causal": (1, 13, 40, 4, 2, 16, False, None),
}
TPU_CASES = ("gqa3", "gqa8_window", "gqa3_q_shorter_window")


@pytest.mark.parametrize(
    "backend,case",
    [("gpu", name) for name in FLASH_CASES] + [("tpu", name) for name in TPU_CASES],
)
def test_flash_attention_float32_matches_reference(backend, case):
    batch, q_len, kv_len, num_heads, num_kv_heads, head_dim, causal, window = FLASH_CASES[case]
    q, k, v, d_out = _random_qkv(
        0, batch, q_len, kv_len, num_heads, num_kv_heads, head_dim, jnp.float32
    )
    kernel = jax.jit(
        lambda *a: _value_and_grads(
            lambda q, k, v: flash_attention(
                q, k, v, causal=causal, window=window, backend=backend, interpret=True,
                block_sizes=SMALL_BLOCKS,
            ),
            *a,
        )
    )  # fmt: skip
    reference = jax.jit(
        lambda *a: _value_and_grads(
            lambda q, k, v: attention_reference(q, k, v, causal=causal, window=window), *a
        )
    )
    got, want = kernel(q, k, v, d_out), reference(q, k, v, d_out)
    for name, tolerance, a, b in zip(["out", "dq", "dk", "dv"], [1e-5] + [1e-4] * 3, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert _relative_error(a, b) < tolerance, (name, _relative_error(a, b))


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_flash_attention_bfloat16_matches_float32_reference(backend):
    q, k, v, d_out = _random_qkv(1, 1, 33, 41, 6, 2, 32, jnp.bfloat16)

    def kernel(q, k, v):
        return flash_attention(
            q, k, v, window=20, backend=backend, interpret=True, block_sizes=SMALL_BLOCKS
        )

    def reference(q, k, v):
        return attention_reference(q, k, v, window=20)

    got = jax.jit(lambda *a: _value_and_grads(kernel, *a))(q, k, v, d_out)
    as_f32 = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
    want = jax.jit(lambda *a: _value_and_grads(reference, *a))(*as_f32)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want):
        assert a.dtype == jnp.bfloat16, name
        assert _relative_error(a, b) < 2e-2, (name, _relative_error(a, b))


def test_flash_attention_defaults_pick_interpret_on_cpu():
    q, k, v, _ = _random_qkv(2, 1, 24, 24, 4, 2, 16, jnp.float32)
    got = jax.jit(flash_attention)(q, k, v)
    assert _relative_error(got, jax.jit(attention_reference)(q, k, v)) < 1e-5


@pytest.mark.parametrize(
    "shapes,kwargs,message",
    [
        (((1, 8, 4, 16), (1, 8, 3, 16)), {}, "multiple of kv heads"),
        (((1, 8, 4, 16), (1, 8, 2, 8)), {}, "head_dim"),
        (((1, 9, 2, 16), (1, 8, 2, 16)), {}, "Tq <= Tk"),
        (((1, 8, 2, 16), (1, 8, 2, 16)), {"window": 4, "causal": False}, "needs causal"),
        (((1, 8, 2, 16), (1, 8, 2, 16)), {"backend": "cuda"}, "backend"),
    ],
)
def test_flash_attention_rejects_bad_input(shapes, kwargs, message):
    q, kv = jnp.zeros(shapes[0]), jnp.zeros(shapes[1])
    with pytest.raises(ValueError, match=message):
        flash_attention(q, kv, kv, **kwargs)


# (batch, Tq, S, Hq, Hkv, D, lengths, num_splits): ragged lengths (1, full, mid-block, a sequence
# shorter than its queries), caches that are not multiples of the 16-key block.
DECODE_CASES = {
    "gqa3_one_query": (3, 1, 100, 6, 2, 16, [100, 1, 57], 3),
    "gqa8_three_queries": (2, 3, 50, 8, 1, 32, [50, 20], 2),
    "mha_short_sequence": (2, 2, 64, 4, 4, 16, [1, 64], None),
}


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_attention_matches_reference(backend, case):
    batch, q_len, cache_len, num_heads, num_kv_heads, head_dim, lengths, splits = DECODE_CASES[case]
    q, k, v, _ = _random_qkv(
        3, batch, q_len, cache_len, num_heads, num_kv_heads, head_dim, jnp.float32
    )
    lengths = jnp.array(lengths, jnp.int32)
    kernel = functools.partial(
        decode_attention, backend=backend, interpret=True, block_keys=16, num_splits=splits
    )
    got = jax.jit(kernel)(q, k, v, lengths)
    want = jax.jit(decode_attention_reference)(q, k, v, lengths)
    assert got.shape == q.shape and got.dtype == q.dtype
    assert _relative_error(got, want) < 1e-5


def test_decode_attention_ignores_cache_entries_past_each_length():
    q, k, v, _ = _random_qkv(4, 2, 1, 40, 4, 2, 16, jnp.bfloat16)
    lengths = jnp.array([23, 7], jnp.int32)
    past_end = jnp.arange(40)[None, :, None, None] >= lengths[:, None, None, None]
    poisoned = jnp.where(past_end, jnp.nan, v)
    got = jax.jit(functools.partial(decode_attention, block_keys=16))(q, k, poisoned, lengths)
    as_f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want = jax.jit(decode_attention_reference)(*as_f32, lengths)
    assert got.dtype == jnp.bfloat16
    assert _relative_error(got, want) < 2e-2


def test_decode_splits_a_million_token_cache_across_many_programs():
    block_keys, blocks_per_split, num_splits = split_plan(8, 1 << 20, 128)
    assert num_splits * blocks_per_split * block_keys >= 1 << 20
    assert num_splits >= 64 and blocks_per_split * block_keys <= 16384


@pytest.mark.parametrize("backend,platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_kernels_lower_for_the_real_devices(backend, platform):
    """Lowering to Triton / Mosaic runs on CPU and catches ops or tile shapes the real compilers
    reject (it stops before PTX / TPU code generation)."""
    q = jax.ShapeDtypeStruct((1, 200, 6, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 200, 2, 128), jnp.bfloat16)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    attention = functools.partial(flash_attention, window=50, backend=backend, interpret=False)
    decode = functools.partial(decode_attention, backend=backend, interpret=False)
    for fn, args in [
        (lambda q, k, v: _value_and_grads(attention, q, k, v, q), (q, kv, kv)),
        (decode, (q, kv, kv, lengths)),
    ]:
        jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
