"""Which tokenizer goes with a checkpoint."""

from __future__ import annotations

from pathlib import Path


def find_tokenizer(checkpoint=None, vocab_size: int | None = None, path=None):
    """The tokenizer for a model, or None when none is known.

    In order: `path` (explicit), `<checkpoint>/tokenizer.model` (training output folders carry
    a copy), then the shipped demo tokenizer when its size equals `vocab_size`.
    """
    from yoco_jax.data import Tokenizer, demo_tokenizer

    if path is not None:
        return Tokenizer.load(path)
    if checkpoint is not None and (Path(checkpoint) / "tokenizer.model").is_file():
        return Tokenizer.load(Path(checkpoint) / "tokenizer.model")
    demo = demo_tokenizer()
    return demo if vocab_size == demo.vocab_size else None
