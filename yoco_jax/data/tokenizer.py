"""SentencePiece tokenizer with fixed special ids (the command that trains one: yoco_jax/cli).

Models trained here use pad 0, eos 1, bos 2, unk 3 (the same ids at training and at inference),
byte fallback (any text encodes, nothing maps to unk), and no text normalization: whitespace,
indentation and newlines survive `decode(encode(text)) == text`.

    yoco-tokenizer train --input stdlib --vocab-size 2048 --out /tmp/tok
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import SupportsIndex

import sentencepiece as spm

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

# Sentencepiece skips training sentences longer than this (bytes); long lines are rare in text.
_MAX_SENTENCE_BYTES = 8192


class Tokenizer:
    """A loaded sentencepiece model. Build with `Tokenizer.load` or `Tokenizer.train`."""

    def __init__(self, model_proto: bytes, path: str | None = None):
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as error:
            raise ValueError(
                f"{path or 'tokenizer bytes'} is not a valid sentencepiece model ({error}); "
                "pass a .model file written by sentencepiece (e.g. by "
                "`yoco-tokenizer train`)."
            ) from None
        if processor.eos_id() < 0:
            raise ValueError(
                f"tokenizer {path or ''} defines no end-of-sequence piece; packing needs one "
                "to separate documents. Train one with `yoco-tokenizer train`."
            )
        self._processor = processor
        self._proto = model_proto
        self.path = path
        self.sha256 = hashlib.sha256(model_proto).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer model {str(path)!r} does not exist; expected a sentencepiece "
                ".model file (train one with `yoco-tokenizer train`)."
            )
        return cls(path.read_bytes(), str(path))

    @classmethod
    def train(
        cls,
        texts_or_files: str | Sequence[str | os.PathLike],
        vocab_size: int,
        out_prefix: str | os.PathLike,
        *,
        model_type: str = "bpe",
        max_sentences: int = 2_000_000,
        seed: int = 0,
    ) -> Tokenizer:
        """Trains a model, writes `<out_prefix>.model` and loads it.

        `texts_or_files`: the data paths `DataConfig.path` accepts (files, folders, globs,
        "stdlib", an official layout root) or, for any item that names no existing path,
        the text itself. Each line of each document is one training sentence; at most
        `max_sentences` of them are sampled (deterministically from `seed`).
        """
        from yoco_jax.data.corpus import iter_texts

        if vocab_size < 260:  # 256 byte pieces + 4 specials
            raise ValueError(f"vocab_size={vocab_size} is too small: byte fallback needs >= 260.")
        out = Path(f"{out_prefix}.model")
        out.parent.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(iter_texts(texts_or_files)),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=PAD_ID,
                eos_id=EOS_ID,
                bos_id=BOS_ID,
                unk_id=UNK_ID,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                character_coverage=0.9995,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=_MAX_SENTENCE_BYTES,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as error:  # e.g. more distinct characters than vocab_size
            raise ValueError(
                f"sentencepiece could not train with vocab_size={vocab_size}: {error}"
            ) from None
        out.write_bytes(model.getvalue())
        return cls.load(out)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._processor.encode(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """`encode` of each text (no specials), in C++ threads."""
        return self._processor.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[SupportsIndex]) -> str:
        """The text of `ids`; ids past the tokenizer (padding rows of a model vocabulary larger
        than it, which training never targets) decode to nothing."""
        size = self.vocab_size
        return self._processor.decode([int(i) for i in ids if 0 <= int(i) < size])

    @property
    def vocab_size(self) -> int:
        return self._processor.vocab_size()

    def piece(self, token: int) -> str:
        """The sentencepiece piece of a token id ("</s>", "\u2581the", "<0x0A>")."""
        return self._processor.id_to_piece(int(token))

    def token_text(self, token: int) -> str:
        """One token's text as it reads inside a longer text (a leading space kept; a byte
        piece its character when it is one byte of ASCII; ids past the tokenizer: "")."""
        if not 0 <= token < self.vocab_size:
            return ""
        piece = self.piece(token)
        if self._processor.is_byte(int(token)):
            value = int(piece[3:-1], 16)
            return chr(value) if value < 128 else piece
        return piece.replace("\u2581", " ")

    @property
    def model_bytes(self) -> bytes:
        """The serialized sentencepiece model (what `save` writes)."""
        return self._proto

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def bos_id(self) -> int:
        return self._processor.bos_id()

    @property
    def pad_id(self) -> int:
        """The model's pad id; models without one (e.g. LLaMA's) pad with eos."""
        pad = self._processor.pad_id()
        return pad if pad >= 0 else self.eos_id

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model bytes to `path` atomically (a temporary file renamed over it); a
        file already holding these bytes is left alone (it may be the very file loaded)."""
        path = Path(path)
        if path.is_file() and path.read_bytes() == self._proto:
            return
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(self._proto)
        os.replace(temporary, path)

    def __reduce__(self):  # pickles as the model bytes, for grain worker processes
        return (Tokenizer, (self._proto, self.path))

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def demo_tokenizer() -> Tokenizer:
    """The demo's 2048-piece tokenizer (shipped; trained on the Python standard library)."""
    return Tokenizer.load(Path(__file__).parent.parent / "assets" / "demo_tokenizer.model")


def _sentences(texts: Iterator[str]) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line
