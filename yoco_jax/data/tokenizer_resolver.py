"""Which tokenizer: a name or path given by the user ("demo" = the shipped one), or the one a
checkpoint folder carries; never a guess (a wrong tokenizer decodes to plausible garbage).
"""

from __future__ import annotations

import os
from pathlib import Path

from yoco_jax.data.tokenizer import Tokenizer, demo_tokenizer

TOKENIZER_FILE = "tokenizer.model"  # training runs and exports keep their tokenizer here
DEMO = "demo"  # the name of the shipped 2048-piece tokenizer


def load_tokenizer(name_or_path: str | os.PathLike):
    """The tokenizer named "demo" (shipped), or the sentencepiece .model at a path."""
    return demo_tokenizer() if str(name_or_path) == DEMO else Tokenizer.load(name_or_path)


def find_tokenizer(checkpoint=None, vocab_size: int | None = None, path=None):
    """The tokenizer for a model, or None when none is known.

    `path` (explicit: a .model path or "demo") wins, else `<checkpoint>/tokenizer.model`. With
    `vocab_size`, a tokenizer larger than the model's vocabulary is an error (see
    check_tokenizer).
    """
    if path is None and checkpoint is not None:
        path = Path(checkpoint) / TOKENIZER_FILE
        if not path.is_file():
            return None
    if path is None:
        return None
    tokenizer = load_tokenizer(path)
    if vocab_size is not None:
        check_tokenizer(tokenizer, vocab_size)
    return tokenizer


def check_tokenizer(tokenizer, vocab_size: int) -> None:
    """Raises when the tokenizer has more pieces than the model's `vocab_size` (its ids would
    index past the embedding). Fewer is allowed, as training allows it: the extra rows are
    padding that the tokenizer never produces."""
    if tokenizer.vocab_size > vocab_size:
        name = tokenizer.path or "(in memory)"
        raise ValueError(
            f"tokenizer {name} has {tokenizer.vocab_size} pieces but the model's "
            f"vocabulary has only {vocab_size}: use the tokenizer the model was trained with "
            f"(the {TOKENIZER_FILE} of its run folder)"
        )


def no_tokenizer_message(checkpoint) -> str:
    """Why a text prompt cannot run, and the fixes."""
    return (
        f"{checkpoint} carries no tokenizer (no {TOKENIZER_FILE} in it), so text prompts cannot "
        "be encoded: pass --tokenizer PATH (the sentencepiece .model the model was trained "
        'with), or give token ids ({"tokens": [...]} lines in --input-jsonl)'
    )
