"""Exact log-likelihoods of whole token sequences, chunk by chunk through the inference cache.

Each chunk runs like a prefill (inference's own `prefill_steps` with targets: retention states
/ window rings carried, K/V written once) except that the output layers run at every position
of the chunk (`extend(logits="all")`), so any document length is scored exactly, never
windowed or truncated. Activations are O(batch x chunk); what grows
with the length is the cache: YOCO's one global K/V (the Transformer's K/V of every layer).
The log-softmax, the target's log-probability and the greedy check happen inside the jitted
chunk, so no [B, T, vocab] array ever leaves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from yoco_jax.inference.chunked_prefill import prefill_tokens
from yoco_jax.inference.plan import Buckets, default_prefill_chunk, plan
from yoco_jax.model.handle import ModelHandle


def score_batch(
    model: ModelHandle, rows: Sequence[Sequence[int]], *, prefill_chunk: int, n_rows: int
):
    """Rows of >= 2 tokens, padded into one batch of `n_rows` -> per row (log-probs [L - 1],
    greedy [L - 1]) of tokens 1..L-1 given the tokens before them."""
    shape = plan([len(r) - 1 for r in rows], buckets=Buckets(), prefill_chunk=prefill_chunk)
    # A power of two (>= 16), a multiple of the chunk: few shapes over a whole task.
    inputs = np.zeros((n_rows, shape.width), np.int32)
    targets = np.zeros((n_rows, shape.width), np.int32)
    n = np.zeros((n_rows,), np.int32)
    for i, row in enumerate(rows):
        inputs[i, : len(row) - 1] = row[:-1]
        targets[i, : len(row) - 1] = row[1:]
        n[i] = len(row) - 1
    _, _, scores = prefill_tokens(
        model, inputs, n, prefill_chunk=shape.chunk, targets=targets, top=1
    )
    greedy = scores.top_ids[..., 0] == targets[:, : scores.logp.shape[1]]
    return [(scores.logp[i, : n[i]], greedy[i, : n[i]]) for i in range(len(rows))]


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
