"""DataConfig: what to read and how (the trainer's `data` section)."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any

from yoco_jax.data.corpus import KINDS


# Not type-checked at run time: __post_init__ checks every value with a message naming the fix
# (the annotations give the values as stored, after a list path becomes a tuple).
@typing.no_type_check
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data.

    path: a text/JSONL file, folder (recursive), glob, official YOCO layout root, ArrayRecord
      folder from `prepare`, "stdlib" (`stdlib_corpus()`), or a list of files/folders/globs.
    kind: "auto" (detect from the path), "text" (every file is one document), "jsonl" (every
      line is one {"text": ...} document), "official" or "arrayrecord".
    eval_fraction: fraction of documents held out for split="eval", chosen by a hash of the
      document's index in its source (the same documents whatever the seed or process count);
      a source of two or more documents where it selects none holds out one (0 = no split).
    shuffle_window: train rows are shuffled within consecutive windows of this many packed rows,
      on top of the per-epoch document shuffle (0 = off), so long documents spread over batches.
    num_threads: threads that read and tokenize documents in each process (no worker
      processes: for more throughput, tokenize once with `prepare`).
    """

    path: str | tuple[str, ...] = "stdlib"
    kind: str = "auto"
    eval_fraction: float = 0.01
    shuffle_window: int = 256
    num_threads: int = 4

    def __post_init__(self):
        path = self.path
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, (list, tuple)):
            path = tuple(os.fspath(p) for p in path)
            if not path:
                raise ValueError("DataConfig.path is an empty list; name at least one data path.")
        elif not isinstance(path, str) or not path:
            raise ValueError(f"DataConfig.path must be a path or list of paths, got {path!r}.")
        object.__setattr__(self, "path", path)
        if self.kind not in KINDS:
            raise ValueError(f"DataConfig.kind={self.kind!r} is not one of {KINDS}.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"DataConfig.eval_fraction={self.eval_fraction} must be in [0, 1).")
        for name, low in (("shuffle_window", 0), ("num_threads", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"DataConfig.{name}={value!r} must be an integer >= {low}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
        """DataConfig from a mapping (e.g. a YAML section); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown DataConfig keys {unknown}; valid keys: {sorted(fields)}.")
        return cls(**values)
