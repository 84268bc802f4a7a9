"""A sentencepiece BPE model as Hugging Face tokenizer files (`tokenizer.json`,
`tokenizer_config.json`) that `transformers.AutoTokenizer` loads and that encode exactly as
sentencepiece does, written from the model's own proto (no transformers or tokenizers needed).

Sentencepiece BPE starts from characters and repeatedly merges the adjacent pair whose
concatenation is the highest-scoring piece; an HF BPE model with every split of every piece as a
merge, ranked by the merged piece's score, does the same. Spaces become "▁" (a Replace
normalizer: no pre-tokenizer, the text is one word as in sentencepiece), characters outside the
vocabulary become their UTF-8 byte pieces (byte fallback). Control pieces (pad, eos, bos) are HF
special tokens, kept out of the raw text's matching (`split_special_tokens`): a "</s>" in a
text is encoded as its characters, as sentencepiece does.
"""

from __future__ import annotations

import json

SPACE = "\u2581"  # sentencepiece's escaped space "▁"
# sentencepiece_model.proto's ModelPiece.Type and TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL = 2


def _proto(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def check_convertible(proto) -> None:
    """Raises ValueError unless the model is what `tokenizer_json` converts exactly: BPE with
    byte fallback, no normalization, no dummy prefix (how yoco-tokenizer trains)."""
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if spec.model_type != BPE_MODEL:
        problems.append("it is not a BPE model")
    if not spec.byte_fallback:
        problems.append("it has no byte fallback")
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        problems.append(f"it normalizes text ({norm.name})")
    if norm.add_dummy_prefix or norm.remove_extra_whitespaces or not norm.escape_whitespaces:
        problems.append("it changes whitespace (dummy prefix or extra-whitespace removal)")
    if spec.treat_whitespace_as_suffix or any(p.type == USER_DEFINED for p in proto.pieces):
        problems.append("it has whitespace suffixes or user-defined pieces")
    if problems:
        raise ValueError(
            "the tokenizer cannot be converted to Hugging Face files exactly: "
            f"{'; '.join(problems)}; train one with `yoco-tokenizer train` (BPE, byte "
            "fallback, no normalization)"
        )


def _merges(proto) -> list[list[str]]:
    """Every split (left, right) of every normal piece into two vocabulary pieces, the
    highest-scoring merged piece first (sentencepiece's merge order)."""
    vocab = {p.piece for p in proto.pieces if p.type == NORMAL}
    ranked = sorted(
        (p for p in proto.pieces if p.type == NORMAL and len(p.piece) > 1),
        key=lambda p: -p.score,
    )
    merges = []
    for piece in ranked:
        text = piece.piece
        for i in range(1, len(text)):
            if text[:i] in vocab and text[i:] in vocab:
                merges.append([text[:i], text[i:]])
    return merges


def tokenizer_json(proto) -> dict:
    """The `tokenizer.json` of a convertible sentencepiece proto (see check_convertible)."""
    check_convertible(proto)
    pieces = list(proto.pieces)
    unk = next(p.piece for p in pieces if p.type == UNKNOWN)
    special = [
        {
            "id": i,
            "content": p.piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, p in enumerate(pieces)
        if p.type in (CONTROL, UNKNOWN)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {p.piece: i for i, p in enumerate(pieces)},
            "merges": _merges(proto),
        },
    }


def _piece(proto, index: int) -> str | None:
    return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None


def tokenizer_config(proto) -> dict:
    """`tokenizer_config.json`: the special tokens by name, and no bos/eos added to encodings
    (models here train on documents + eos, prompts without bos)."""
    ids = proto.trainer_spec
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _piece(proto, ids.bos_id),
        "eos_token": _piece(proto, ids.eos_id),
        "unk_token": _piece(proto, ids.unk_id),
        "pad_token": _piece(proto, ids.pad_id),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
    }


def tokenizer_files(model_bytes: bytes) -> dict[str, str]:
    """{"tokenizer.json": text, "tokenizer_config.json": text} for a sentencepiece model;
    ValueError when it does not convert exactly (check_convertible)."""
    proto = _proto(model_bytes)
    return {
        "tokenizer.json": json.dumps(tokenizer_json(proto), ensure_ascii=False) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(proto), indent=2) + "\n",
    }


def special_ids(model_bytes: bytes) -> dict:
    """{"bos_token_id", "eos_token_id", "pad_token_id"} of a sentencepiece model (None: none)."""
    spec = _proto(model_bytes).trainer_spec
    ids = {"bos_token_id": spec.bos_id, "eos_token_id": spec.eos_id, "pad_token_id": spec.pad_id}
    return {k: (v if v >= 0 else None) for k, v in ids.items()}
