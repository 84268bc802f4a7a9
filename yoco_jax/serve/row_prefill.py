"""Prefilling one request as a single row, a chunk at a time, at a bucketed (rung) shape.

Prompt lengths go to the server's ladder (`Buckets.up_to(--max-len)`), so the row caches and
the chunk shapes, hence the compilations, are bounded by the number of rungs. The chunks run
through inference's own `prefill_steps`: the same computation as `generate` for a prompt
alone, with YOCO's early exit and no chunk past the prompt's end; the engine steps it one
chunk at a time between decode blocks.
"""

from __future__ import annotations

import jax.numpy as jnp

from yoco_jax.inference.chunked_prefill import prefill_steps
from yoco_jax.inference.plan import Buckets
from yoco_jax.inference.prompts import pad_prompts
from yoco_jax.model.cache import resize_cache


def chunk_shapes(width: int, chunk: int, fresh: bool) -> set[tuple[int, bool]]:
    """(chunk width, fresh) of every chunk over a prompt `width` wide (a cold-start count)."""
    first = min(chunk, width)
    shapes = {(first, fresh)}
    shapes |= {(min(chunk, width - s), False) for s in range(first, width, chunk)}
    return shapes


def prefill_compilations(rungs: tuple[int, ...], chunk: int) -> int:
    """The number of prefill compilations fresh prompts can cause: chunk shapes per rung."""
    return sum(len(chunk_shapes(w, min(chunk, w), True)) for w in rungs)


class RowPrefill:
    """One request's prompt going into a one-row cache, chunk by chunk.

    tokens: the prompt ids (may be empty when `prefix` carries last logits). prefix: None or
    (one-row cache, logits or None, its token count) to continue from (a saved prompt cache;
    copied, never consumed).
    """

    def __init__(self, model, tokens, buckets: Buckets, chunk: int, prefix=None):
        n = len(tokens)
        start = 0 if prefix is None else prefix[2]
        width = buckets.seq_len(max(n, 1))
        cols = buckets.seq_len(start + max(n, 1))
        cache = None if prefix is None else resize_cache(prefix[0], cols)
        self.last = jnp.zeros((1, model.config.vocab_size), jnp.float32)
        if prefix is not None and prefix[1] is not None:
            self.last = jnp.array(prefix[1][:1], jnp.float32, copy=True)
        self.cache, self.done = cache, n == 0
        self._left = n  # prompt tokens not yet run
        if n:
            padded, lengths = pad_prompts([tokens], 1, width)
            chunk = min(chunk, width)
            self._steps = prefill_steps(
                model, padded, lengths, cache, max_len=cols, prefill_chunk=chunk
            )

    def step(self) -> int:
        """Runs the next chunk; returns its padded width (the work done)."""
        width = next(self._steps)
        self._left -= width
        if self._left <= 0:  # that was the last chunk: collect the result
            try:
                next(self._steps)
            except StopIteration as end:
                self.last, self.cache = end.value
                self.done = True
        return width
