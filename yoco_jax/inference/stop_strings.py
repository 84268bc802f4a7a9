"""Stops: the tokenizer's EOS and stop ids end a row inside the decode loop; stop strings (any
number of tokens, e.g. "\\n\\n") are matched in the decoded text between decode blocks, and the
completion is cut before them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def resolve_stop(stop, tokenizer) -> tuple[list[int], list[str]]:
    """(stop ids, stop strings): the tokenizer's EOS (when known) plus `stop`'s ids; `stop`'s
    strings (any number of tokens) are matched in the decoded text, so they need a tokenizer."""
    ids = [] if tokenizer is None else [tokenizer.eos_id]
    texts = []
    for s in [] if stop is None else [stop] if isinstance(stop, (str, int)) else stop:
        if isinstance(s, str):
            if not s:
                raise ValueError("a stop string is empty: give non-empty strings or token ids")
            if tokenizer is None:
                raise ValueError(
                    f"stop string {s!r} needs a tokenizer to match the text: pass tokenizer= "
                    "or give token ids"
                )
            texts.append(s)
        else:
            ids.append(int(s))
    return sorted(set(ids)), sorted(set(texts))


def find_stop(text: str, stop_texts: Sequence[str]) -> int | None:
    """Where the first stop string starts in `text` (None when none occurs)."""
    hits = [i for i in (text.find(s) for s in stop_texts) if i >= 0]
    return min(hits) if hits else None


def rows_at_stop(out, n_out, done, stop_texts: Sequence[str], tokenizer) -> np.ndarray:
    """bool [B]: live rows whose text so far (out [B, N], n_out [B] tokens) holds a stop string."""
    return np.array(
        [
            not done[i]
            and find_stop(tokenizer.decode(out[i, : n_out[i]].tolist()), stop_texts) is not None
            for i in range(len(done))
        ]
    )


def cut_at_stop(tokens: list[int], text: str, cut: int, tokenizer) -> tuple[list[int], str]:
    """(the longest token prefix whose text lies before the stop string, text[:cut])."""
    text = text[:cut]
    n = len(tokens)
    while n and not text.startswith(tokenizer.decode(tokens[:n])):
        n -= 1
    return tokens[:n], text
