"""Pre-tokenize a corpus into ArrayRecord shards, so training reads tokens instead of text.

    yoco-prepare --input <data> --tokenizer <model> --out <folder>

`<data>` is anything `DataConfig.path` accepts. Each source becomes shards `<k>.<n>.array_record`
of one record per document (its tokens, without EOS, as little-endian uint16 when the vocab
fits, else int32), in the source's document order, so held-out splits and batches equal those
of on-the-fly tokenization. `manifest.json`, written last, names the tokenizer (path, sha256)
and counts documents and tokens; `DataConfig(path=<folder>)` reads the folder back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yoco_jax.data.corpus import MANIFEST, TokenDocuments, resolve_sources
from yoco_jax.data.tokenizer import Tokenizer

FORMAT = "yoco-jax-tokens/1"
_ENCODE_BATCH = 256


def prepare(
    data: str | Sequence[str],
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    kind: str = "auto",
    shard_documents: int = 65536,
    num_threads: int = os.cpu_count() or 1,
    progress: bool = True,
) -> dict:
    """Writes the shards and manifest of `data` into the empty or new folder `out`; returns
    the manifest."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {str(out)!r} is not empty; choose a new folder.")
    sources = resolve_sources(data, kind)
    if any(isinstance(s.documents, TokenDocuments) for s in sources):
        raise ValueError(f"{data!r} is already tokenized; prepare reads text.")
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype("<u2") if tokenizer.vocab_size <= 2**16 else np.dtype("<i4")
    total = sum(len(s.documents) for s in sources)
    bar = tqdm(total=total, unit="doc", desc="tokenizing", disable=not progress)
    entries = []
    for k, source in enumerate(sources):
        documents, num_tokens, shards = source.documents, 0, []
        for first in range(0, len(documents), shard_documents):
            shards.append(f"{k:03d}.{len(shards):05d}.array_record")
            writer = ArrayRecordWriter(str(out / shards[-1]), "group_size:1")
            last = min(first + shard_documents, len(documents))
            for start in range(first, last, _ENCODE_BATCH):
                texts = [documents[i] for i in range(start, min(start + _ENCODE_BATCH, last))]
                for ids in tokenizer.encode_batch(texts, num_threads=num_threads):
                    writer.write(np.asarray(ids, dtype).tobytes())
                    num_tokens += len(ids)
                bar.update(len(texts))
                bar.set_postfix(source=source.name, tokens=num_tokens)
            writer.close()
        entries.append(
            dict(
                name=source.name,
                weight=source.weight,
                shards=shards,
                num_documents=len(documents),
                num_tokens=num_tokens,
            )
        )
    bar.close()
    manifest = dict(
        format=FORMAT,
        input=data if isinstance(data, str) else list(data),
        kind=kind,
        dtype=dtype.str,
        tokenizer=dict(
            path=str(Path(tokenizer.path).resolve()) if tokenizer.path else None,
            sha256=tokenizer.sha256,
            vocab_size=tokenizer.vocab_size,
        ),
        num_documents=total,
        num_tokens=sum(e["num_tokens"] for e in entries),
        sources=entries,
    )
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
