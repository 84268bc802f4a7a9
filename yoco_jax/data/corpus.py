"""Where documents come from: data paths resolved to weighted sources of random-access documents.

A *source* is a named, weighted list of documents; a document is a `str` (text and JSONL files,
the official layout) or a 1-D token array (ArrayRecord folders written by `prepare`). Document
`i` of a source is always the same document, so held-out splits and shuffles are reproducible.

- a plain text file is one document; each non-blank line of a JSONL file is one document
  (`{"text": ...}`, or the official loader's `content` / `raw_content_lines`); every file is
  checked when the sources are resolved (see documents.py);
- folders are read recursively (hidden files, `__pycache__` and binary files skipped; other
  files that are not UTF-8 skipped with a warning), globs expand recursively (`**`), "stdlib"
  is `stdlib_corpus()`;
- the official YOCO layout root has `json/train.json`: a list of `{"name": ..., "weight": w}`
  (or `"count"`, a positive number) entries; source `name` lists its JSONL shards in
  `json/<name>.json` (or inline as the entry's `"source"` list), each path absolute or relative
  to the root;
- an ArrayRecord folder has the `manifest.json` written by `yoco-prepare`.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yoco_jax.data.documents import (
    JSONL_SUFFIXES,
    TextDocuments,
    TokenDocuments,
    is_binary,
    text_problem,
)

STDLIB = "stdlib"
KINDS = ("auto", "text", "jsonl", "official", "arrayrecord")
MANIFEST = "manifest.json"


def stdlib_corpus() -> list[str]:
    """Sorted paths of the running interpreter's standard library `.py` files that are UTF-8
    text (no site-packages; a few encoding test fixtures are not)."""
    return list(_stdlib_files())


@functools.cache
def _stdlib_files() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = (p for p in root.rglob("*.py") if skip.isdisjoint(p.relative_to(root).parts))
    return tuple(sorted(str(p) for p in files if text_problem(p.read_bytes()) is None))


@dataclass(frozen=True)
class Source:
    """A named mixture component: `documents[i]` is a str or a 1-D integer token array."""

    name: str
    weight: float
    documents: Any  # TextDocuments | TokenDocuments: __len__ and __getitem__


def resolve_sources(path: str | Sequence[str], kind: str = "auto") -> list[Source]:
    """The sources a `DataConfig.path`/`kind` pair names (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"data kind {kind!r} is not one of {KINDS}.")
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise ValueError("data path is an empty list; give at least one file, folder or glob.")
    paths = [os.fspath(p) for p in paths]
    if kind == "official" or (kind == "auto" and _is_official_root(paths)):
        return official_sources(_single(paths, "an official layout root"))
    if kind == "arrayrecord" or (kind == "auto" and _is_arrayrecord_folder(paths)):
        return arrayrecord_sources(_single(paths, "an ArrayRecord folder"))
    files: list[str] = []
    lenient: list[bool] = []  # files a folder walk or glob found: skipped (not refused) if bad
    for p in paths:
        found = find_files(p)
        files.extend(found)
        lenient.extend([p == STDLIB or not Path(p).is_file()] * len(found))
    formats = [_file_format(f, kind) for f in files]
    documents = TextDocuments(files, formats, lenient)
    if not len(documents):
        raise ValueError(f"empty corpus: the {len(files)} files of {path!r} hold no documents.")
    return [Source("data", 1.0, documents)]


def find_files(path: str) -> list[str]:
    """Data files of one file, folder (recursive) or glob, sorted; "stdlib" is `stdlib_corpus()`."""
    if path == STDLIB:
        return stdlib_corpus()
    if _has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise FileNotFoundError(f"data glob {path!r} matches no files.")
        return sorted({f for m in matches for f in find_files(m)})
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if not p.is_dir():
        raise FileNotFoundError(
            f"data path {path!r} does not exist; expected a text or JSONL file, a folder of them, "
            "a glob, an official layout root (json/train.json), an ArrayRecord folder from "
            "`yoco-prepare`, or 'stdlib'."
        )
    files = sorted(str(f) for f in p.rglob("*") if f.is_file() and _visible(f.relative_to(p)))
    files = [f for f in files if f.endswith(JSONL_SUFFIXES) or not is_binary(f)]
    if not files:
        raise ValueError(f"empty corpus: folder {path!r} holds no text or JSONL files.")
    return files


def official_sources(root: str) -> list[Source]:
    """The weighted sources of an official YOCO data root (`json/train.json` + shards)."""
    listing = Path(root) / "json" / "train.json"
    if not listing.is_file():
        raise FileNotFoundError(
            f"{root!r} is not an official YOCO data root: {str(listing)!r} is missing. Expected "
            "json/train.json listing sources, json/<name>.json listing each source's JSONL shards."
        )
    entries = _load_json(listing)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{listing}: expected a non-empty list of {{'name', 'weight'}} entries.")
    sources = []
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{listing}: entry {entry!r} has no 'name'.")
        name = entry["name"]
        weight = entry.get("weight", entry.get("count"))
        valid = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not valid or not math.isfinite(weight) or weight <= 0:
            raise ValueError(
                f"{listing}: source {name!r} has weight {weight!r}; give it a positive number "
                "as 'weight' (or 'count')."
            )
        shards = entry.get("source") or _load_json(Path(root) / "json" / f"{name}.json")
        if not isinstance(shards, list) or not all(isinstance(s, str) for s in shards):
            raise ValueError(f"{listing}: source {name!r} must list its shards as path strings.")
        shards = [str(Path(root) / s) for s in shards]  # absolute shard paths stay absolute
        for shard in shards:
            if not Path(shard).is_file():
                raise FileNotFoundError(f"source {name!r}: shard {shard!r} does not exist.")
        documents = TextDocuments(shards, ["jsonl"] * len(shards), [False] * len(shards))
        if not len(documents):
            raise ValueError(f"empty corpus: source {name!r} of {root!r} has no documents.")
        sources.append(Source(name, float(weight), documents))
    return sources


def arrayrecord_sources(folder: str) -> list[Source]:
    manifest = read_manifest(folder)
    return [
        Source(
            s["name"],
            float(s["weight"]),
            TokenDocuments([str(Path(folder) / f) for f in s["shards"]], manifest["dtype"]),
        )
        for s in manifest["sources"]
    ]


def read_manifest(folder: str) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: an ArrayRecord data folder is written by "
            "`yoco-prepare --input <data> --tokenizer <model> --out <folder>`."
        )
    return _load_json(path)


def iter_texts(texts_or_files: str | Sequence[str | os.PathLike]) -> Iterator[str]:
    """Document texts of data paths; items naming no existing path are texts themselves."""
    items = [texts_or_files] if isinstance(texts_or_files, (str, os.PathLike)) else texts_or_files
    for item in items:
        is_path = isinstance(item, os.PathLike) or item == STDLIB or _exists(item)
        if not is_path:
            yield item
            continue
        for source in resolve_sources(os.fspath(item)):
            if isinstance(source.documents, TokenDocuments):
                raise ValueError(f"{item!r} is already tokenized; give the raw text it came from.")
            for i in range(len(source.documents)):
                yield source.documents[i]


def _file_format(path: str, kind: str) -> str:
    if kind in ("text", "jsonl"):
        return kind
    return "jsonl" if path.endswith(JSONL_SUFFIXES) else "text"


def _is_official_root(paths: list[str]) -> bool:
    return len(paths) == 1 and (Path(paths[0]) / "json" / "train.json").is_file()


def _is_arrayrecord_folder(paths: list[str]) -> bool:
    return len(paths) == 1 and (Path(paths[0]) / MANIFEST).is_file()


def _single(paths: list[str], what: str) -> str:
    if len(paths) != 1:
        raise ValueError(f"data path must be a single {what}, got {len(paths)} paths.")
    return paths[0]


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _visible(relative: Path) -> bool:
    return not any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


def _exists(item: str | os.PathLike) -> bool:
    return os.path.exists(item) or (_has_magic(str(item)) and bool(glob.glob(str(item))))


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error}).") from None
