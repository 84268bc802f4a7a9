"""The shapes of a generation batch, decided in one place: the padded prompt width and its
prefill chunk, and the cache positions (room) prompts plus new tokens need.

Widths and cache lengths go to buckets (powers of two, or a ladder), so a stream of requests
compiles a bounded number of times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

DEFAULT_PREFILL_CHUNK = 4096
# Measured per platform (docs/benchmarks.md, performance run): on an H100, yoco-3b-1m prefills
# 1M tokens in 9.1 s with chunks of 16384 against 11.5 s with 4096, for 1.6 GB more peak.
PREFILL_CHUNK = {"gpu": 16384}
PREFILL_CHUNK_HELP = (  # the commands' --prefill-chunk
    f"tokens per prefill step (default: {PREFILL_CHUNK['gpu']} on GPU, "
    f"{DEFAULT_PREFILL_CHUNK} elsewhere)"
)


def default_prefill_chunk(platform: str | None = None) -> int:
    """The prefill chunk used when none is given: PREFILL_CHUNK's for the platform (default
    the default backend's), else DEFAULT_PREFILL_CHUNK."""
    return PREFILL_CHUNK.get(platform or jax.default_backend(), DEFAULT_PREFILL_CHUNK)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Shape ladders; a size goes to the smallest rung that holds it, past the last rung (or
    with no ladder) to the next power of two, never below `min_length`."""

    batch: tuple[int, ...] = ()
    length: tuple[int, ...] = ()
    min_length: int = 16

    @classmethod
    def up_to(cls, max_len: int, min_length: int = 16) -> Buckets:
        """Lengths on a ladder of powers of two from `min_length` below `max_len`, then
        `max_len` itself (a server's fixed context): a bounded set of shapes."""
        rungs, r = [], min_length
        while r < max_len:
            rungs.append(r)
            r *= 2
        return cls(length=(*rungs, max_len), min_length=min_length)

    def batch_size(self, n: int) -> int:
        return bucket(n, self.batch, 1)

    def seq_len(self, n: int) -> int:
        return bucket(n, self.length, self.min_length)


DEFAULT_BUCKETS = Buckets()  # powers of two, lengths >= 16


def bucket(n: int, ladder: Sequence[int], minimum: int) -> int:
    """The smallest rung of `ladder` >= n, else the next power of two >= n (at least `minimum`)."""
    for rung in sorted(ladder):
        if rung >= n:
            return rung
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def check_positive(name: str, value) -> None:
    """Raises unless `value` is a positive integer (a chunk, block or step count)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


class Plan(NamedTuple):
    width: int  # padded prompt width: the longest prompt's bucket, then a multiple of `chunk`
    chunk: int  # prefill chunk (every chunk of the padded prompts has this width)
    max_len: int  # cache positions: a fresh cache's length, or what a continued one grows to
    need: int  # positions the longest row uses: cached + prompt + max_new_tokens - 1


def plan(
    lengths: Sequence[int],
    max_new_tokens: int = 0,
    *,
    buckets: Buckets,
    prefill_chunk: int,
    max_len: int | None = None,
    used: Sequence[int] | np.ndarray | None = None,
    multiple: int = 1,
) -> Plan:
    """The shapes for prompts of `lengths` tokens followed by `max_new_tokens` new ones.

    The last new token is returned, never fed back: it needs no cache position. `used`: tokens
    already in a cache being continued (one per prompt); None for a fresh cache, whose length is
    `max_len` (default: the bucket of the longest prompt + max_new_tokens) and must hold `need`.
    A continued cache holding fewer than `need` positions grows to `max_len` (default: the
    bucket of `need`).

    `multiple` (the size of a mesh's `context` axis): the chunk and `max_len` are rounded up to
    multiples of it, so every chunk and the cache split into equal slices over the axis.
    """
    check_positive("prefill_chunk", prefill_chunk)
    up = lambda n, m: -(-n // m) * m
    longest = max(lengths)
    width = buckets.seq_len(longest)
    chunk = up(min(prefill_chunk, width), multiple)
    width = up(width, chunk)
    filled = longest if used is None else int(np.max(np.asarray(used) + np.asarray(lengths)))
    need = filled + max(max_new_tokens - 1, 0)
    if used is not None:
        return Plan(width, chunk, up(max_len or buckets.seq_len(need), multiple), need)
    max_len = up(max_len or buckets.seq_len(longest + max_new_tokens), multiple)
    if need > max_len and max_new_tokens:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} - 1 (the last new "
            f"token takes no cache position) does not fit the context max_len={max_len}: "
            "shorten the prompt or raise max_len"
        )
    if need > max_len:
        raise ValueError(f"prompt of {longest} tokens is longer than the context max_len={max_len}")
    return Plan(width, chunk, max_len, need)
