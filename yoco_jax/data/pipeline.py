"""grain pipelines: documents -> tokens + EOS -> packed rows -> weighted mixture -> batches.

Per source, this process's slice of the split's documents (every `process_count`-th, from
`process_index`) is shuffled by the seed each epoch (train; the train split repeats forever),
tokenized with EOS appended, and packed by grain's concat-then-split: documents are concatenated
into one stream and cut into rows of `seq_len + 1` tokens, nothing dropped, a document running
over a row boundary continuing at the start of the next row. Train rows are shuffled within
windows, sources are interleaved by weight (deterministic proportions, row by row), and rows
are batched into:

    inputs       int32   [batch, seq_len]  row[:-1]
    targets      int32   [batch, seq_len]  row[1:]
    segment_ids  int32   [batch, seq_len]  1, 2, ... per document piece in the row, 0 on padding
    loss_mask    float32 [batch, seq_len]  1 where the target is a real token, else 0

The eval split reads its documents once in order (no shuffle), all sources one after the other,
and ends; its last row and batch are padded (pad id, segment 0, loss mask 0). Processes may get
different numbers of eval batches; the trainer should take the same number on every process.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np

from yoco_jax.data.config import DataConfig
from yoco_jax.data.corpus import Source, TokenDocuments, read_manifest, resolve_sources
from yoco_jax.data.tokenizer import Tokenizer

SPLITS = ("train", "eval")
_PREFETCH_DOCUMENTS = 64


def held_out(num_documents: int, eval_fraction: float) -> np.ndarray:
    """[num_documents] bool: documents of the eval split, by a fixed hash of their index.

    When the fraction selects no document of a corpus of two or more, the document with the
    lowest hash is held out, so small corpora still get a held-out loss (a single document is
    never held out: it is the training data)."""
    x = np.arange(num_documents, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finalizer
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    uniform = (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
    mask = uniform < eval_fraction
    if eval_fraction > 0 and num_documents > 1 and not mask.any():
        mask[np.argmin(uniform)] = True
    return mask


def split_indices(num_documents: int, eval_fraction: float, split: str) -> np.ndarray:
    """Indices of a split's documents, ascending."""
    return np.flatnonzero(held_out(num_documents, eval_fraction) == (split == "eval"))


class Tokenize:
    """(source id, document index) -> {"tokens": int32 [n + 1]}: the document's tokens + EOS."""

    def __init__(self, sources: list[Source], tokenizer: Tokenizer):
        self._documents = [s.documents for s in sources]
        self._tokenizer = tokenizer

    def __call__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        source_id, index = key
        document = self._documents[source_id][index]
        if isinstance(document, str):
            document = self._tokenizer.encode(document)
        tokens = np.empty(len(document) + 1, np.int32)
        tokens[:-1] = document
        tokens[-1] = self._tokenizer.eos_id
        return {"tokens": tokens}


class RowsToBatch:
    """Packed rows {"tokens", "tokens_segment_ids": [b, seq_len + 1]} -> the model's batch."""

    def __init__(self, batch_size: int, pad_id: int):
        self._batch_size = batch_size
        self._pad_id = pad_id

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, segments = rows["tokens"], rows["tokens_segment_ids"]
        missing = self._batch_size - len(tokens)  # only the eval split's last batch is short
        if missing:
            tokens = np.pad(tokens, ((0, missing), (0, 0)))
            segments = np.pad(segments, ((0, missing), (0, 0)))
        tokens = np.where(segments == 0, self._pad_id, tokens).astype(np.int32)
        return {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "segment_ids": segments[:, :-1].astype(np.int32),
            "loss_mask": (segments[:, 1:] != 0).astype(np.float32),
        }


class DataIterator:
    """A checkpointable batch iterator: `get_state()` is JSON-serializable, and `set_state(s)`
    makes the next batch the one that followed when `s` was taken."""

    def __init__(self, iterator, signature: dict[str, Any]):
        self._iterator = iterator
        self._signature = signature

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        return json.loads(
            json.dumps({"pipeline": self._signature, "grain": self._iterator.get_state()})
        )

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("pipeline") != self._signature:
            raise ValueError(
                f"data iterator state was saved by a pipeline with {state.get('pipeline')}; this "
                f"one has {self._signature}. Resume with the same data settings."
            )
        self._iterator.set_state(_restore_tuples(state["grain"]))


def make_iterator(
    config: DataConfig,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    split: str = "train",
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    sources: list[Source] | None = None,
) -> DataIterator:
    """Batches of this process's share (`batch_size` rows); see the module docstring.

    sources: `resolve_sources(config.path, config.kind)`, when the caller already has them
    (they are read and checked once; iterators of several streams can share them). An eval
    stream whose share of the held-out documents is empty ends at once."""
    import grain

    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a DataConfig, got {type(config).__name__}.")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    if split == "eval" and config.eval_fraction == 0:
        raise ValueError("split='eval' needs held-out documents: set data.eval_fraction > 0.")

    if sources is None:
        sources = resolve_sources(config.path, config.kind)
    if split == "eval" and not eval_documents(sources, config.eval_fraction):
        raise ValueError(
            f"data.eval_fraction={config.eval_fraction} holds out no document of {config.path!r} "
            "(a single document is never held out): use more documents, or "
            "data.eval_fraction=0 for no held-out loss."
        )
    _check_tokenizer(config, sources, tokenizer)
    tokenize = Tokenize(sources, tokenizer)
    read = grain.ReadOptions(
        num_threads=config.num_threads, prefetch_buffer_size=_PREFETCH_DOCUMENTS
    )
    pack = dict(length_struct={"tokens": seq_len + 1})

    def keys(source_ids: list[int]) -> list[tuple[int, int]]:
        """This process's slice of the split's (source id, document index) pairs."""
        pairs = [
            (s, int(i))
            for s in source_ids
            for i in split_indices(len(sources[s].documents), config.eval_fraction, split)
        ]
        mine = pairs[process_index::process_count]
        if not mine and split == "train":
            names = [sources[s].name for s in source_ids]
            raise ValueError(
                f"no train documents for data stream {process_index} of {process_count} in "
                f"source(s) {names} of {config.path!r} ({len(pairs)} in the split): use more "
                "documents, fewer data streams (data_shards) or a smaller data.eval_fraction."
            )
        return mine

    if split == "train":
        streams = []
        for s, source in enumerate(sources):
            docs = grain.MapDataset.source(keys([s])).shuffle(seed=_source_seed(seed, source.name))
            rows = grain.experimental.ConcatThenSplitIterDataset(
                docs.repeat().map(tokenize).to_iter_dataset(read), **pack
            )
            if config.shuffle_window:
                rows = grain.experimental.WindowShuffleIterDataset(
                    rows, window_size=config.shuffle_window, seed=_source_seed(seed, source.name)
                )
            streams.append(rows)
        weights = [source.weight for source in sources]
        rows = streams[0] if len(streams) == 1 else grain.IterDataset.mix(streams, weights)
        batches = rows.batch(batch_size, drop_remainder=True)
    else:
        docs = grain.MapDataset.source(keys(list(range(len(sources)))))
        rows = grain.experimental.ConcatThenSplitIterDataset(
            docs.map(tokenize).to_iter_dataset(read), **pack
        )
        batches = rows.batch(batch_size, drop_remainder=False)
    batches = batches.map(RowsToBatch(batch_size, tokenizer.pad_id))
    signature = dict(
        split=split,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        kind=config.kind,
        eval_fraction=config.eval_fraction,
        shuffle_window=config.shuffle_window,
    )
    return DataIterator(iter(batches), signature)


def eval_documents(sources: list[Source], eval_fraction: float) -> int:
    """The number of held-out documents (all sources, all processes)."""
    return sum(int(held_out(len(s.documents), eval_fraction).sum()) for s in sources)


def _source_seed(seed: int, name: str) -> int:
    """Distinct shuffle seeds per source (grain shuffles epoch e with seed + e)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def _check_tokenizer(config: DataConfig, sources: list[Source], tokenizer: Tokenizer) -> None:
    if not any(isinstance(s.documents, TokenDocuments) for s in sources):
        return
    expected = read_manifest(config.path)["tokenizer"]
    if expected["sha256"] != tokenizer.sha256:
        raise ValueError(
            f"{config.path!r} was tokenized with {expected['path']!r} (sha256 "
            f"{expected['sha256'][:12]}), not with {tokenizer.path!r} (sha256 "
            f"{tokenizer.sha256[:12]}): pass that tokenizer or run prepare again."
        )


def _restore_tuples(state: Any) -> Any:
    """Undo JSON's tuple -> list for grain's concat-then-split slices, which it compares to
    tuples."""
    if isinstance(state, dict):
        return {
            k: {f: tuple(s) for f, s in v.items()}
            if k == "remainder_slices"
            else _restore_tuples(v)
            for k, v in state.items()
        }
    if isinstance(state, list):
        return [_restore_tuples(v) for v in state]
    return state
