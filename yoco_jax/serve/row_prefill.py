"""Prefilling one request as a single row, a chunk at a time, at a bucketed (rung) shape.

Prompt lengths go to the server's ladder (`Buckets.up_to(--max-len)`), so the row caches and
the chunk shapes, hence the compilations, are bounded by the number of rungs. The chunks run
through inference's own `prefill_steps`: the same computation as `generate` for a prompt
alone, with YOCO's early exit (or every position scored, for prompt log-probs) and no chunk
past the prompt's end; the engine steps it one chunk at a time between decode blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from yoco_jax.inference.chunked_prefill import prefill_steps
from yoco_jax.inference.decode_loop import DecodeState, start_decode
from yoco_jax.inference.plan import Buckets
from yoco_jax.inference.prompts import pad_prompts
from yoco_jax.inference.sampling import Sampling, row_keys
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

    tokens: the prompt ids after the prefix (may be empty when `prefix` carries last logits).
    prefix: None or (one-row cache, logits or None, its token count) to continue from (a saved
    prompt cache or a prefix-cache hit; copied, never consumed). `score`: also score every
    prompt token after the first (log-prob and the `score` most likely alternatives; needs a
    prompt of >= 1 token and no prefix). `keep(p, cache, logits)`: called with the state
    after p prompt tokens at each chunk boundary and at the end (the prefix cache stores it).
    """

    def __init__(
        self,
        model,
        tokens,
        buckets: Buckets,
        chunk: int,
        prefix=None,
        *,
        score: int | None = None,
        keep: Callable | None = None,
        mesh=None,
    ):
        n = len(tokens)
        self.start = 0 if prefix is None else prefix[2]
        width = buckets.seq_len(max(n, 1))
        cols = buckets.seq_len(self.start + max(n, 1))
        cache = None if prefix is None else resize_cache(prefix[0], cols)
        self.last = jnp.zeros((1, model.config.vocab_size), jnp.float32)
        if prefix is not None and prefix[1] is not None:
            self.last = jnp.array(prefix[1][:1], jnp.float32, copy=True)
        self.cache, self.done, self.scores, self._keep = cache, n == 0, None, keep
        self._pos, self._n = self.start, self.start + n  # prompt tokens run so far, in all
        if n:
            padded, lengths = pad_prompts([tokens], 1, width)
            targets = None
            if score is not None:
                targets = np.zeros_like(padded)
                targets[0, : n - 1] = padded[0, 1:n]  # the last position has no prompt target
            self._steps = prefill_steps(
                model,
                padded,
                lengths,
                cache,
                max_len=cols,
                prefill_chunk=min(chunk, width),
                targets=targets,
                top=max(score or 1, 1),
                mesh=mesh,
            )

    def decode_state(self, req, buffer: int, max_len: int, logprobs: int) -> DecodeState:
        """The one-row decode state after this prefill, for `insert_row` into a batch of
        `max_len` positions: the request's budget, sampling and choice key."""
        sampling = Sampling(req.temperature, req.top_k, req.top_p)
        one = start_decode(
            self.last, self.cache, req.max_tokens, req.seed, buffer, sampling, max_len, logprobs
        )
        return one._replace(keys=row_keys(req.seed, req.index + 1)[req.index :])

    def step(self) -> int:
        """Runs the next chunk; returns its padded width (the work done)."""
        width, last, cache = next(self._steps)
        self._pos = min(self._pos + width, self._n)
        if self._keep is not None:
            self._keep(self._pos, cache, last)
        if self._pos >= self._n:  # that was the last chunk: collect the result
            try:
                next(self._steps)
            except StopIteration as end:
                self.last, self.cache, *scores = end.value
                self.scores = scores[0] if scores else None
                self.done = True
        return width


def start_row_prefill(
    model, req, buckets: Buckets, chunk: int, prefix_cache, mesh=None
) -> RowPrefill:
    """A request's prefill: from its saved cache, or from the longest prefix-cache hit (prompt
    scoring runs whole), storing its states in the prefix cache on the way."""
    tokens, prefix, keep = req.tokens, req.prefix, None
    if prefix is None:
        if not req.scores_prompt and (hit := prefix_cache.lookup(tokens)) is not None:
            req.cached = hit[0]
            prefix, tokens = (hit[1], hit[2], hit[0]), tokens[hit[0] :]
        keep = lambda p, cache, logits: prefix_cache.store(req.tokens[:p], cache, logits)
    score = req.logprobs if req.scores_prompt else None
    return RowPrefill(model, tokens, buckets, chunk, prefix, score=score, keep=keep, mesh=mesh)
