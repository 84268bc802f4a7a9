"""The one planning function of generation shapes: prompt width, chunk, cache room."""

import pytest

from yoco_jax.inference.plan import Buckets, default_prefill_chunk, plan

POW2 = Buckets()


def test_width_is_the_bucket_rounded_to_the_chunk():
    assert plan([5, 17], buckets=POW2, prefill_chunk=4096) == (32, 32, 32, 17)
    # 17 -> bucket 32 -> chunks of 12 -> 36 columns.
    assert plan([17, 3], buckets=POW2, prefill_chunk=12)[:2] == (36, 12)
    assert plan([100], buckets=Buckets(length=(48, 96, 192)), prefill_chunk=64)[:2] == (192, 64)


def test_fresh_room_holds_prompt_and_answer_but_the_last_token():
    # 10 + 7 = 17 -> a 32-position cache; need 10 + 6 (the last new token is never fed back).
    assert plan([10, 4], 7, buckets=POW2, prefill_chunk=8)[2:] == (32, 16)
    assert plan([10], 7, buckets=POW2, prefill_chunk=8, max_len=16).max_len == 16
    with pytest.raises(ValueError, match="the last new token takes no cache position"):
        plan([10], 8, buckets=POW2, prefill_chunk=8, max_len=16)
    with pytest.raises(ValueError, match="longer than the context max_len=8"):
        plan([10], buckets=POW2, prefill_chunk=8, max_len=8)


def test_a_continued_cache_needs_its_fullest_row():
    # Rows holding 20 and 3 tokens get prompts of 2 and 30: the fullest row uses 33 + 4 - 1.
    shape = plan([2, 30], 4, buckets=POW2, prefill_chunk=8, used=[20, 3])
    assert (shape.need, shape.max_len) == (36, 64)
    assert plan([2, 30], 4, buckets=POW2, prefill_chunk=8, used=[20, 3], max_len=40).max_len == 40


def test_the_default_prefill_chunk_is_the_measured_one_per_platform():
    assert default_prefill_chunk("gpu") == 16384  # H100 measurement in docs/benchmarks.md
    assert default_prefill_chunk("tpu") == default_prefill_chunk("cpu") == 4096
    assert default_prefill_chunk() == 4096  # this CPU
