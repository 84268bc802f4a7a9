"""Training data: tokenizer, sources, grain pipelines, and the `prepare` command.

Public interface (used by yoco_jax.train):

- `Tokenizer.load(path)`, `Tokenizer.train(texts_or_files, vocab_size, out_prefix, *,
  model_type="bpe", max_sentences=2_000_000, seed=0)`; `.encode(text, bos=False, eos=False)`,
  `.decode(ids)`, `.encode_batch(texts, num_threads=1)`, `.bos_id`, `.eos_id`, `.pad_id`,
  `.vocab_size`, `.path`, `.sha256`. Models trained here: pad 0, eos 1, bos 2, unk 3, byte
  fallback, no normalization (decode(encode(text)) == text). Foreign models keep their ids; one
  without a pad piece pads with eos. CLI: `yoco-tokenizer train --input
  <files/folders/globs/stdlib> --vocab-size N --out <prefix>`.
- `demo_tokenizer()`: 2048 pieces, shipped in yoco_jax/assets/, trained on the stdlib sources.
- `load_tokenizer(name_or_path)` ("demo" or a .model), `find_tokenizer(checkpoint, vocab_size,
  path)`: the one way a tokenizer is chosen (tokenizer_resolver.py): the one named, else the
  checkpoint folder's tokenizer.model, never a guess; a vocabulary mismatch is an error.
- `stdlib_corpus()`: sorted paths of the interpreter's standard library `.py` files.
- `DataConfig(path, kind="auto", eval_fraction=0.01, shuffle_window=256,
  num_threads=4)` (frozen; `DataConfig.from_dict(mapping)` rejects unknown keys).
- `make_iterator(config, tokenizer, *, seq_len, batch_size, split="train", seed=0,
  process_index=0, process_count=1, sources=None)`: an iterator of dicts of numpy arrays
  (inputs/targets/segment_ids int32, loss_mask float32, each [batch_size, seq_len], batch_size
  being this process's share) with `get_state()` (JSON-serializable) and `set_state(state)`.
  Packing: concat-then-split (grain), EOS after each document. Train repeats forever, epochs
  reshuffled from the seed; eval is one ordered pass, last batch padded (loss_mask 0).
  `sources` (`corpus.resolve_sources(path, kind)`) lets several streams share one reading.
- Every text and JSONL file is read and checked when the sources are resolved (before the
  first batch): files named explicitly must be UTF-8 text, JSONL lines JSON objects with a
  string text; files a folder walk finds that are not UTF-8 and null texts are skipped with a
  `documents.DataWarning`.
- `yoco-prepare --input <data> --tokenizer <model> --out <folder>`:
  pre-tokenized ArrayRecord shards + manifest.json, read back with kind "arrayrecord" (or "auto").

Nothing here imports grain or array_record at import time (the GPU machine has neither).
"""

from yoco_jax.data.config import DataConfig
from yoco_jax.data.corpus import stdlib_corpus
from yoco_jax.data.pipeline import DataIterator, make_iterator
from yoco_jax.data.tokenizer import Tokenizer, demo_tokenizer
from yoco_jax.data.tokenizer_resolver import find_tokenizer, load_tokenizer

__all__ = [
    "DataConfig",
    "DataIterator",
    "Tokenizer",
    "demo_tokenizer",
    "find_tokenizer",
    "load_tokenizer",
    "make_iterator",
    "stdlib_corpus",
]
