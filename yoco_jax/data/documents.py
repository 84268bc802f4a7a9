"""Random access to documents: text and JSONL files (checked up front), ArrayRecord shards.

`TextDocuments` reads every file once when it is built, so bad data fails before training
starts, with the file (and line) named:
- a text file is one document and must be UTF-8 without NUL bytes (binary files are refused);
- each non-blank line of a JSONL file is one document: a JSON object with a string `text` (or
  the official loader's `content`, or `raw_content_lines`, a list of strings joined by newlines).
  Lines whose text is null are skipped and counted (a DataWarning); any other value is an error.
Files found by a folder walk or a glob that are not UTF-8 text are skipped with a DataWarning
instead of an error (a file named explicitly is refused).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_FIELDS = ("text", "content", "raw_content_lines")
_BINARY_SNIFF_BYTES = 8192


class DataWarning(UserWarning):
    """Data that was skipped; the message names the files (and lines) and why."""


class TextDocuments:
    """Documents of text and JSONL files through a byte-offset index (see the module docstring).

    files, formats ("text" | "jsonl"), lenient: per file; a lenient file that is not UTF-8 text
    is skipped with a warning instead of raising ValueError.
    """

    def __init__(self, files: Sequence[str], formats: Sequence[str], lenient: Sequence[bool]):
        self.files = list(files)
        file_ids, starts, ends, lines = [], [], [], []
        skipped, null_lines = [], []
        for file_id, (path, fmt, skip) in enumerate(zip(self.files, formats, lenient)):
            data = Path(path).read_bytes()
            if fmt == "text":
                problem = text_problem(data)
                if problem and skip:
                    skipped.append(f"{path} ({problem})")
                    continue
                if problem:
                    raise ValueError(
                        f"{path} {problem}: data files must be UTF-8 text or JSONL; convert it "
                        "(e.g. `iconv -f latin1 -t utf-8`) or leave it out of data.path"
                    )
                spans = [(0, len(data), 0)] if data else []
            else:
                spans, nulls = _jsonl_documents(data, path)
                null_lines += [(path, line) for line in nulls]
            for start, end, line in spans:
                file_ids.append(file_id)
                starts.append(start)
                ends.append(end)
                lines.append(line)
        self._file_ids = np.asarray(file_ids, np.int32)
        self._starts = np.asarray(starts, np.int64)
        self._ends = np.asarray(ends, np.int64)
        self._lines = np.asarray(lines, np.int64)  # for error messages (0 for text files)
        self._is_jsonl = np.asarray([fmt == "jsonl" for fmt in formats], bool)
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} file(s) that are not UTF-8 text: {_first(skipped)}",
                DataWarning,
                stacklevel=3,
            )
        if null_lines:
            where = [f"{p}:{line + 1}" for p, line in null_lines]
            warnings.warn(
                f"skipped {len(null_lines)} JSONL line(s) whose text is null: {_first(where)}",
                DataWarning,
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> str:
        file_id = int(self._file_ids[index])
        start, end = int(self._starts[index]), int(self._ends[index])
        with open(self.files[file_id], "rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        path = self.files[file_id]
        where = f"{path}:{int(self._lines[index]) + 1}" if self._is_jsonl[file_id] else path
        try:
            text = raw.decode("utf-8")
            if self._is_jsonl[file_id]:
                text = record_text(json.loads(text), where)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            text, problem = None, str(error)
        else:
            problem = "its text is null"
        if text is None:  # it was checked when training started
            raise ValueError(f"{where} changed since training started ({problem}); restore it.")
        return text


class TokenDocuments:
    """Random access to pre-tokenized documents in ArrayRecord shards (one token array each)."""

    def __init__(self, shards: Sequence[str], dtype: str):
        from grain.sources import ArrayRecordDataSource  # grain is not needed at import

        self.shards = list(shards)
        self._records = ArrayRecordDataSource(self.shards)
        self._dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.frombuffer(self._records[index], dtype=self._dtype)


def text_problem(data: bytes) -> str | None:
    """Why `data` is not UTF-8 text (None if it is)."""
    nul = data.find(b"\0", 0, _BINARY_SNIFF_BYTES)
    if nul >= 0:
        return f"looks binary (a NUL byte at offset {nul})"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"is not UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}, line {line})"
    return None


def is_binary(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(_BINARY_SNIFF_BYTES)


def record_text(record, where: str) -> str | None:
    """The text of one JSONL record (None: null text); ValueError names `where` otherwise."""
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: a JSONL line must be a JSON object with one of the fields {TEXT_FIELDS}, "
            f"got a {type(record).__name__}."
        )
    for field in TEXT_FIELDS:
        if field not in record:
            continue
        value = record[field]
        if value is None or isinstance(value, str):
            return value
        lines = field == "raw_content_lines"
        if lines and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "\n".join(value)
        expected = "a list of strings" if lines else "a string"
        raise ValueError(
            f"{where}: field {field!r} holds a {type(value).__name__}, expected {expected}."
        )
    raise ValueError(f"{where}: a JSONL document needs one of the fields {TEXT_FIELDS}.")


def _jsonl_documents(data: bytes, path: str) -> tuple[list[tuple[int, int, int]], list[int]]:
    """((start, end, line) of each document line, line numbers of null texts); every non-blank
    line is parsed once."""
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    starts = np.concatenate([[0], newlines + 1]).tolist()
    ends = np.concatenate([newlines, [len(data)]]).tolist()
    spans, nulls = [], []
    for line, (s, e) in enumerate(zip(starts, ends)):
        raw = data[s:e]
        if not raw.strip():
            continue
        where = f"{path}:{line + 1}"
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{where}: not UTF-8 (byte 0x{raw[error.start]:02x}); JSONL files must be UTF-8."
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON line ({error}).") from None
        if record_text(record, where) is None:
            nulls.append(line)
        else:
            spans.append((s, e, line))
    return spans, nulls


def _first(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
