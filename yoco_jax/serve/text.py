"""Incremental text of a growing token list, cut at stop strings.

Each update decodes the whole token list (so spaces and multi-byte characters come out as
`tokenizer.decode` gives them) and releases only text that cannot change any more: a tail that
could still begin a stop string, or a partly decoded character, is held back until the next
tokens (or the end) settle it. The released pieces concatenate to the final text.
"""

from __future__ import annotations

from collections.abc import Sequence

_PARTIAL_CHAR = "\ufffd"  # what an incomplete UTF-8 byte sequence decodes to


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.shown = ""

    def _held(self, text: str) -> int:
        """How many trailing characters might still change or start a stop string."""
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        partial = len(text) - len(text.rstrip(_PARTIAL_CHAR))
        return max(hold, partial)

    def update(self, tokens: Sequence[int], final: bool) -> tuple[str, bool]:
        """(new text to release, whether a stop string was met). After a stop string or with
        `final`, `self.shown` is the whole text."""
        text = self.tokenizer.decode(list(tokens))
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        stopped = bool(hits)
        if stopped:
            text, final = text[: min(hits)], True
        safe = text if final else text[: len(text) - self._held(text)]
        if not safe.startswith(self.shown):  # a decode that rewrote released text: rare
            if final:
                self.shown = safe
            return "", stopped
        delta, self.shown = safe[len(self.shown) :], safe
        return delta, stopped
