"""Saved prompt caches ("cache once" files of `save_cache`) that requests continue from.

A request names a file relative to the server's --cache-dir; names that lead outside it are
refused, and so is a cache another model or other weights made (the fingerprint `save_cache(...,
params=)` records is compared with the served weights, as `load_cache(params=)` does). Loaded
caches stay in a small LRU keyed by path and modification time, so a document asked many
questions is read from disk once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from yoco_jax.inference.cache_io import load_cache


class PrefixStore:
    """The saved caches under `cache_dir` (None: none) that `model` (config + params) may use."""

    def __init__(self, cache_dir, model, keep: int = 8):
        self.root = None if cache_dir is None else Path(cache_dir).resolve()
        self.model, self.keep = model, keep
        self._lru: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        """The file `name` names under the cache dir, or a ValueError saying why not."""
        if self.root is None:
            raise ValueError("this server has no prompt caches: start it with --cache-dir DIR")
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"cache {name!r} lies outside the server's --cache-dir")
        if not path.is_file():
            raise ValueError(f"cache {name!r} does not exist under the server's --cache-dir")
        return path

    def load(self, name: str) -> tuple:
        """(one-row cache, last logits [1, V] or None, tokens it holds) for a file name."""
        path = self.path(name)
        key = (str(path), os.stat(path).st_mtime_ns)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
        try:
            cache, logits, _ = load_cache(path, self.model.config, params=self.model.params)
        except ValueError as e:  # name the cache as the client did, not the server's path
            raise ValueError(str(e).replace(str(path), f"cache {name!r}")) from None
        rows = cache.lengths.shape[0]
        if rows != 1:
            raise ValueError(f"cache {name!r} holds {rows} rows: save the cache of one prompt")
        entry = (cache, logits, int(np.asarray(cache.lengths)[0]))
        with self._lock:
            self._lru[key] = entry
            while len(self._lru) > self.keep:
                self._lru.popitem(last=False)
        return entry
