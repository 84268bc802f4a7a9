"""Prefilling one request as a single row, a chunk at a time, at a bucketed (rung) shape.

Prompt lengths go to a ladder of rungs (powers of two from 16, then --max-len itself), so the
row caches and the chunk shapes, hence the compilations, are bounded by the number of rungs.
The chunks run through `generate`'s own jitted `_prefill_chunk`: the same computation as
`generate` for a prompt alone, with YOCO's early exit (the cross-decoder runs at each chunk's
last token only) and no chunk past the prompt's end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.inference.chunked_prefill import _prefill_chunk
from yoco_jax.model import init_cache
from yoco_jax.model.cache import KVCache, map_kv

MIN_RUNG = 16


def ladder(max_len: int, minimum: int = MIN_RUNG) -> tuple[int, ...]:
    """Rungs: powers of two from `minimum` below `max_len`, then `max_len`."""
    rungs, r = [], minimum
    while r < max_len:
        rungs.append(r)
        r *= 2
    return (*rungs, max_len)


def rung(n: int, rungs: tuple[int, ...]) -> int:
    """The smallest rung holding n positions (n <= the last rung)."""
    return next(r for r in rungs if r >= n)


def chunk_shapes(width: int, chunk: int, fresh: bool) -> set[tuple[int, bool]]:
    """(chunk width, fresh) of every chunk over a prompt `width` wide (a cold-start count)."""
    first = min(chunk, width)
    shapes = {(first, fresh)}
    shapes |= {(min(chunk, width - s), False) for s in range(first, width, chunk)}
    return shapes


def prefill_plan(rungs: tuple[int, ...], chunk: int) -> int:
    """The number of prefill compilations fresh prompts can cause: chunk shapes per rung."""
    return sum(len(chunk_shapes(w, min(chunk, w), True)) for w in rungs)


def fit_cache(cache, max_len: int):
    """A cache whose K/V hold `max_len` positions: zero-padded, or cut where the positions past
    every row's length are unused (a saved prompt cache may be longer than it needs)."""
    extra = max_len - cache.max_len
    if extra >= 0:
        fit = lambda x: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
    elif int(np.max(np.asarray(cache.lengths))) <= max_len:
        fit = lambda x: x[:, :max_len]
    else:
        raise ValueError(f"a cache of {int(np.max(cache.lengths))} tokens cannot fit {max_len}")
    return map_kv(cache, lambda c: KVCache(fit(c.k), fit(c.v)))


class RowPrefill:
    """One request's prompt going into a one-row cache, chunk by chunk.

    tokens: the prompt ids (may be empty when `prefix` carries last logits). prefix: None or
    (cache, logits or None) of one row to continue from (a saved prompt cache).
    """

    def __init__(self, model, tokens, rungs, chunk: int, prefix=None):
        self.model = model
        n = len(tokens)
        start = 0 if prefix is None else int(np.asarray(prefix[0].lengths)[0])
        width = rung(max(n, 1), rungs)
        self.chunk = min(chunk, width)
        self.tokens = np.zeros((1, width), np.int32)
        self.tokens[0, :n] = tokens
        self.length = n
        self.pos = 0  # prompt tokens consumed
        cols = rung(start + max(n, 1), rungs)
        if prefix is None:
            self.cache, self.fresh = init_cache(model.config, 1, cols), True
            self.last = jnp.zeros((1, model.config.vocab_size), jnp.float32)
        else:
            # Copies: the chunks donate the cache and logits, the store keeps the originals.
            self.cache = jax.tree.map(jnp.copy, fit_cache(prefix[0], cols))
            self.fresh, last = False, prefix[1]
            if last is None:
                last = jnp.zeros((1, model.config.vocab_size), jnp.float32)
            self.last = jnp.array(last[:1], jnp.float32, copy=True)

    @property
    def done(self) -> bool:
        return self.pos >= self.length

    def step(self) -> int:
        """Runs the next chunk; returns its padded width (the work done)."""
        chunk = self.tokens[:, self.pos : self.pos + self.chunk]
        n_new = np.array([min(self.length - self.pos, chunk.shape[1])], np.int32)
        cfg = self.model.config
        self.last, self.cache = _prefill_chunk(
            cfg, self.model.params, chunk, n_new, self.cache, self.last, self.fresh
        )
        self.fresh = False
        self.pos += int(n_new[0])
        return chunk.shape[1]
