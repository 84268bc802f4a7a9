"""A completion request as the engine sees it, and its result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from yoco_jax.serve.text import TextStream

MAX_LOGPROBS = 5  # OpenAI's completions allow logprobs 0..5


@dataclasses.dataclass(eq=False)
class Request:
    """One completion choice. `prefix`: (one-row cache, last logits or None, its token count)
    of a saved prompt cache to continue from. `index`: the choice's index among a request's
    `n`: it draws from key `index` of `seed`, as row `index` of `generate` does. `logprobs`:
    None, or record each new token's log-prob and that many alternatives; with `echo` the
    prompt tokens are scored too (every prompt position runs the cross-decoder)."""

    tokens: list[int]
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    prefix: tuple | None = None
    index: int = 0
    logprobs: int | None = None
    echo: bool = False
    on_event: Callable[[str, object], None] | None = None
    cancelled: bool = False  # set by the client side (disconnect); the engine frees the slot
    generated: list[int] = dataclasses.field(default_factory=list)
    token_logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    prompt_scores: object = None  # Scores of the prompt (echo with logprobs)
    cached: int = 0  # prompt tokens taken from the automatic prefix cache
    submitted_at: float = 0.0
    first_token_at: float | None = None
    text: TextStream | None = None
    sent: int = 0  # generated tokens already sent in "delta" events

    @property
    def prefix_tokens(self) -> int:
        return 0 if self.prefix is None else self.prefix[2]

    @property
    def scores_prompt(self) -> bool:
        return self.echo and self.logprobs is not None


@dataclasses.dataclass
class Result:
    text: str
    tokens: list[int]  # generated, without the stop token
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int  # the prompt plus the reused prefix
    cached_tokens: int  # of which came from a prompt cache file or the prefix cache
    token_logprobs: list[float] = dataclasses.field(default_factory=list)  # per token
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    prompt_scores: object = None  # Scores [1, P, ...] of the prompt, with echo + logprobs

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)
