"""The automatic exact prefix cache: the state of a one-row prefill at a token prefix, reused by
any later prompt that starts with the same tokens.

YOCO makes it cheap: the state after p tokens is the global K/V rows [0, p) plus the
self-decoder's per-layer state at p (retention states, or the sliding-window ring), with no
per-layer K/V. Entries are stored at each prompt's end and at every prefill-chunk boundary, cut
to p positions, together with the logits after position p (so a prompt equal to a stored
prefix decodes at once). A lookup returns the longest stored prefix of a prompt; the engine
copies it into a fresh row cache (never aliased: the row's prefill donates its cache).
Entries are evicted least recently used within a byte budget.

Memory per entry: p x (2 x n_kv_heads x head_dim x K/V itemsize) + the self-decoder state
(n_layers / 2 x heads x head_dim^2 x 4 bytes for retention; 2 x window x heads x head_dim x
itemsize per layer for a window) + vocab x 4 bytes of logits.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence

import jax.numpy as jnp

from yoco_jax.model.cache import resize_cache, tree_bytes


class PrefixCache:
    def __init__(self, budget_bytes: int):
        self.budget = max(int(budget_bytes), 0)
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, ...], tuple] = OrderedDict()
        self._lengths: Counter[int] = Counter()  # stored prefix lengths
        self._lock = threading.Lock()
        self.hits = self.misses = self.hit_tokens = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int]):
        """(p, one-row cache of p positions, logits [1, V]) of the longest stored prefix of
        `tokens` (at most all of them), or None. The arrays are the store's: copy them."""
        with self._lock:
            for p in sorted(self._lengths, reverse=True):
                key = tuple(tokens[:p])
                if p <= len(tokens) and key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    self.hit_tokens += p
                    return (p, *self._entries[key][:2])
            self.misses += 1
            return None

    def store(self, tokens: Sequence[int], cache, logits) -> None:
        """Keeps the state after `tokens` (a one-row cache holding exactly them, and the logits
        after the last): a copy cut to len(tokens) positions. No-op when already stored or
        larger than the whole budget."""
        key = tuple(tokens)
        if not key:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
        entry = (resize_cache(cache, len(key)), jnp.array(logits[:1], jnp.float32, copy=True))
        size = tree_bytes(entry)
        if size > self.budget:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (*entry, size)
            self._lengths[len(key)] += 1
            self.bytes += size
            while self.bytes > self.budget:
                old, (_, _, old_size) = self._entries.popitem(last=False)
                self._lengths[len(old)] -= 1
                if not self._lengths[len(old)]:
                    del self._lengths[len(old)]
                self.bytes -= old_size
                self.evictions += 1
