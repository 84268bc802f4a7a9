"""What `attention_impl=auto` picks where (not how fast it is), and that the attention entry
points run what was picked."""

import jax
import jax.numpy as jnp
import pytest

from yoco_jax.ops import attention_choice
from yoco_jax.ops.attention import cache_attention, causal_attention
from yoco_jax.ops.attention_choice import choose_attention

BF16, F32 = jnp.bfloat16, jnp.float32

# (platform, kind, dtype, head_dim, window, kv_len) -> expected
TABLE = [
    # GPU: cuDNN for whole-sequence causal attention where it applies, else our kernels.
    (("gpu", "causal", BF16, 128, None, 32768), "cudnn"),
    (("gpu", "causal", jnp.float16, 64, None, 4096), "cudnn"),
    (("gpu", "causal", F32, 128, None, 4096), "pallas"),  # cuDNN: half precision only
    (("gpu", "causal", BF16, 128, 2048, 32768), "pallas"),  # windows stay on our kernel
    (("gpu", "causal", BF16, 256, None, 4096), "pallas"),  # head dim > 128
    (("gpu", "decode", BF16, 128, None, 1 << 20), "pallas"),
    (("gpu", "chunk", BF16, 128, None, 131072), "pallas"),
    (("gpu", "chunk", BF16, 128, 1024, 5120), "pallas"),
    (("gpu", "causal", BF16, 24, None, 4096), "xla"),  # no Triton tile for head dim 24
    (("gpu", "decode", BF16, 128, None, 8), "xla"),  # cache shorter than a tile
    # TPU: our Pallas kernels for every kind.
    (("tpu", "causal", BF16, 128, None, 32768), "pallas"),
    (("tpu", "decode", BF16, 128, None, 1 << 20), "pallas"),
    (("tpu", "chunk", BF16, 128, 512, 4096), "pallas"),
    # CPU: XLA (the blocked path for chunks is chosen inside cache_attention).
    (("cpu", "causal", BF16, 128, None, 4096), "xla"),
    (("cpu", "decode", F32, 16, None, 64), "xla"),
    (("cpu", "chunk", F32, 128, None, 65536), "xla"),
]


@pytest.mark.parametrize("args,expected", TABLE)
def test_choose_attention_table(args, expected):
    assert choose_attention(*args) == expected


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="kind must be one of"):
        choose_attention("gpu", "prefill", BF16, 128)


def test_pick_keeps_an_explicit_impl_and_asks_the_table_for_auto():
    q = jnp.zeros((1, 4, 2, 16), BF16)
    assert attention_choice.pick("pallas", "causal", q, 4) == "pallas"
    assert attention_choice.pick("xla", "chunk", q, 4096) == "xla"
    assert attention_choice.pick("auto", "causal", q, 4096) == choose_attention(
        jax.default_backend(), "causal", BF16, 16, None, 4096
    )


def _jaxpr_text(fn, *args):
    return str(jax.make_jaxpr(fn)(*args))


def test_cache_attention_routes_chunks_and_decode():
    """A 20-query chunk runs the chunk kernel under pallas and a while loop (blocked XLA) under
    xla/auto on CPU; 4 queries run the decode kernel, or (with a window) the chunk kernel."""
    k = jnp.zeros((1, 64, 2, 16))
    lengths = jnp.asarray([50])
    chunk, few = jnp.zeros((1, 20, 4, 16)), jnp.zeros((1, 4, 4, 16))

    def kernels_in(q, impl, window=None):
        fn = lambda q, k, n: cache_attention(
            q, k, k, n, window=window, impl=impl, backend="gpu", interpret=True
        )
        eqns = jax.make_jaxpr(fn)(q, k, lengths).jaxpr.eqns
        return {e.params["name"] for e in eqns if str(e.primitive) == "pallas_call"}

    assert kernels_in(chunk, "pallas") == {"chunk_attention"}
    assert kernels_in(few, "pallas") == {"decode_attention_split"}
    assert kernels_in(few, "pallas", window=8) == {"chunk_attention"}
    for impl in ("xla", "auto"):
        assert kernels_in(chunk, impl) == set()
        text = _jaxpr_text(
            lambda q, k, n, impl=impl: cache_attention(q, k, k, n, impl=impl), chunk, k, lengths
        )
        assert "while" in text


def test_causal_attention_auto_is_xla_on_cpu():
    q = jnp.zeros((1, 32, 4, 16), BF16)
    k = jnp.zeros((1, 32, 2, 16), BF16)
    text = _jaxpr_text(lambda q, k: causal_attention(q, k, k, impl="auto"), q, k)
    assert "pallas_call" not in text and "cudnn" not in text
