"""A completion request as the engine sees it, and its result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from yoco_jax.serve.text import TextStream


@dataclasses.dataclass(eq=False)
class Request:
    """One completion request. `prefix`: (one-row cache, last logits or None, its token count)
    of a saved prompt cache to continue from."""

    tokens: list[int]
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    prefix: tuple | None = None
    on_event: Callable[[str, object], None] | None = None
    cancelled: bool = False  # set by the client side (disconnect); the engine frees the slot
    generated: list[int] = dataclasses.field(default_factory=list)
    submitted_at: float = 0.0
    first_token_at: float | None = None
    text: TextStream | None = None
    sent: int = 0  # generated tokens already sent in "delta" events

    @property
    def prefix_tokens(self) -> int:
        return 0 if self.prefix is None else self.prefix[2]


@dataclasses.dataclass
class Result:
    text: str
    tokens: list[int]  # generated, without the stop token
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int  # the prompt plus the reused prefix
    cached_tokens: int  # of which came from a prompt cache file

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)
