"""Prompts as token lists: from strings (with a tokenizer) or ids, checked, and right-padded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from yoco_jax.model.handle import ModelHandle


def as_token_lists(prompts, tokenizer=None, add_bos: bool = False):
    """(list of token lists, single) from a string, a token list, or a list of either."""
    if not isinstance(prompts, (str, Sequence, np.ndarray)):
        raise ValueError(
            f"prompts must be a string, a list of token ids, or a list of either; got "
            f"{type(prompts).__name__}"
        )
    single = isinstance(prompts, str) or (
        len(prompts) > 0 and all(isinstance(t, (int, np.integer)) for t in prompts)
    )
    items = [prompts] if single else list(prompts)
    if not items:
        raise ValueError("no prompts given")
    out = []
    for item in items:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError(
                    "string prompts need a tokenizer: pass tokenizer=Tokenizer.load(path) (the "
                    "model carries none), or give token id lists"
                )
            out.append(tokenizer.encode(item, bos=add_bos))
        else:
            out.append(_token_ids(item))
    return out, single


def _token_ids(item) -> list[int]:
    """One prompt's token ids; floats, bools, strings and nested lists are errors, not coerced."""
    ints = isinstance(item, (list, tuple, np.ndarray)) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in item
    )
    if not ints:
        raise ValueError(
            f"prompt {item!r:.80} must be a string or a flat list of integer token ids"
        )
    return [int(t) for t in item]


def check_prompts(model: ModelHandle, prompts: Sequence[Sequence[int]]) -> None:
    """Raises for an empty prompt or an id outside the model's vocabulary (on the host)."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token")
        model.check_tokens(np.asarray([p]))


def pad_prompts(prompts: Sequence[Sequence[int]], rows: int, width: int):
    """(tokens int32 [rows, width] right-padded with 0, lengths int32 [rows]); rows past the
    prompts are padding rows of length 0."""
    tokens = np.zeros((rows, width), np.int32)
    lengths = np.zeros((rows,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
        lengths[i] = len(p)
    return tokens, lengths
