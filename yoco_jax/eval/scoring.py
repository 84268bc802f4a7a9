"""Exact log-likelihoods of whole token sequences, chunk by chunk through the inference cache.

Each chunk runs like a prefill (`extend`: retention states / window rings carried, K/V written
once) except that the output layers run at every position of the chunk, so any document length
is scored exactly, never windowed or truncated. Activations are O(batch x chunk); what grows
with the length is the cache: YOCO's one global K/V (the Transformer's K/V of every layer).
The log-softmax, the target's log-probability and the greedy check happen inside the jitted
chunk, so no [B, T, vocab] array ever leaves it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.config import ModelConfig
from yoco_jax.inference.plan import Buckets, default_prefill_chunk, plan
from yoco_jax.model import build_model, init_cache
from yoco_jax.model.handle import ModelHandle


@functools.partial(jax.jit, static_argnames=("config", "fresh"), donate_argnames=("cache",))
def _score_chunk(config: ModelConfig, params, tokens, targets, n_new, cache, fresh: bool):
    """(log p(target) [B, T] float32, target is the argmax [B, T] bool, cache)."""
    logits, cache = build_model(config).apply(
        {"params": params}, tokens, cache, n_new, fresh, "all", method="extend"
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1) == targets, cache


def score_batch(
    model: ModelHandle, rows: Sequence[Sequence[int]], *, prefill_chunk: int, n_rows: int
):
    """Rows of >= 2 tokens, padded into one batch of `n_rows` -> per row (log-probs [L - 1],
    greedy [L - 1]) of tokens 1..L-1 given the tokens before them."""
    shape = plan([len(r) - 1 for r in rows], buckets=Buckets(), prefill_chunk=prefill_chunk)
    width, chunk = shape.width, shape.chunk  # a power of two (>= 16), a multiple of the chunk
    inputs = np.zeros((n_rows, width), np.int32)
    targets = np.zeros((n_rows, width), np.int32)
    n = np.zeros((n_rows,), np.int32)
    for i, row in enumerate(rows):
        inputs[i, : len(row) - 1] = row[:-1]
        targets[i, : len(row) - 1] = row[1:]
        n[i] = len(row) - 1
    cache = init_cache(model.config, n_rows, width)
    logp = np.zeros((n_rows, width), np.float32)
    greedy = np.zeros((n_rows, width), bool)
    for start in range(0, int(n.max()), chunk):
        end = start + chunk
        n_new = np.clip(n - start, 0, chunk).astype(np.int32)
        lp, g, cache = _score_chunk(
            model.config, model.params, inputs[:, start:end], targets[:, start:end], n_new,
            cache, start == 0,
        )  # fmt: skip
        logp[:, start:end], greedy[:, start:end] = jax.device_get((lp, g))
    return [(logp[i, : n[i]], greedy[i, : n[i]]) for i in range(len(rows))]


def score_rows(
    model: ModelHandle,
    rows: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    prefill_chunk: int | None = None,
    progress=None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact per-token scores of many token rows (each >= 2 tokens), in input order.

    Rows are sorted by length and batched `batch_size` at a time; the batch (power of two) and
    the padded length (power of two, then a multiple of the chunk) are bucketed, so a whole task
    compiles a few times. `progress(n_done)` is called after each batch.
    """
    prefill_chunk = default_prefill_chunk() if prefill_chunk is None else prefill_chunk
    if not rows:
        return []
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(f"row {i} has {len(row)} token(s): scoring needs at least 2")
    model.check_tokens(np.asarray([t for r in rows for t in r])[None])
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list = [None] * len(rows)
    for first in range(0, len(order), batch_size):
        ids = order[first : first + batch_size]
        n_rows = Buckets().batch_size(len(ids))
        scored = score_batch(
            model, [rows[i] for i in ids], prefill_chunk=prefill_chunk, n_rows=n_rows
        )
        for i, s in zip(ids, scored):
            out[i] = s
        if progress is not None:
            progress(len(ids))
    return out
