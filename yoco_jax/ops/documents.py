"""Packed documents: several documents in one row, told apart by segment ids [B, T] (1, 2, ...
per document piece, 0 on padding; each document one contiguous run). With them every document
is computed as if it were alone (Model.logits(segment_ids=...), train `document_resets`):
rotary positions restart at each document (`document_positions`), attention masks keys of
another segment (`Visibility.segments`, ops/attention.py) and gated retention drops its state
where a document starts (`document_starts`, ops/retention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int


def document_starts(segment_ids: Int[Array, "B T"]) -> Bool[Array, "B T"]:
    """True where a document starts: the first token and every change of segment id."""
    first = jnp.ones_like(segment_ids[:, :1], bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def document_positions(segment_ids: Int[Array, "B T"]) -> Int[Array, "B T"]:
    """Each token's position in its own document (0 at every document start), int32."""
    index = jnp.broadcast_to(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids.shape)
    start = jnp.where(document_starts(segment_ids), index, 0)
    return index - jax.lax.cummax(start, axis=1)
