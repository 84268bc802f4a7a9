"""A completion request as the engine sees it, its output as it comes, its result, and the
reasons the engine refuses one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from yoco_jax.inference.stop_strings import cut_at_stop
from yoco_jax.serve.text import TextStream

MAX_LOGPROBS = 5  # OpenAI's completions allow logprobs 0..5


class QueueFull(Exception):
    """The waiting queue holds --queue-limit requests: try again later."""


class Closed(Exception):
    """The engine is draining or stopped and takes no new requests."""


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

    def take(self, new, logp, top_ids, top_logp, tokenizer, stop_ids):
        """Takes one decode block's new tokens (arrays [n], [n], [n, K], [n, K]) -> (a "delta"
        event's (text, ids) or None, the finish reason or None). Text is released as it
        settles; the ids and their count stop where the text stops, as `generate`'s do."""
        if self.logprobs is not None:
            k = self.logprobs
            self.token_logprobs += logp.tolist()
            self.top_logprobs += [
                list(zip(i[:k], p[:k])) for i, p in zip(top_ids.tolist(), top_logp.tolist())
            ]
        new, finish = new.tolist(), None
        if new[-1] in stop_ids:
            new, finish = new[:-1], "stop"
        self.generated += new
        if finish is None and len(self.generated) >= self.max_tokens:
            finish = "length"
        delta, released = "", self.generated
        if tokenizer is not None:
            delta, hit = self.text.update(self.generated, final=finish is not None)
            finish = "stop" if hit else finish
            # Ids go out with their text: only those wholly inside the released text.
            shown = self.text.shown
            released, _ = cut_at_stop(self.generated, shown, len(shown), tokenizer)
            if hit:
                self.generated = released
        unsent = released[self.sent :]
        event = None
        if delta or (unsent and (tokenizer is None or finish is not None)):
            event = (delta, unsent)
            self.sent = max(self.sent, len(released))
        return event, finish

    def result(self, finish: str, tokenizer) -> Result:
        n = len(self.generated)
        return Result(
            "" if tokenizer is None or self.text is None else self.text.shown,
            self.generated,
            finish,
            self.prefix_tokens + len(self.tokens),
            self.prefix_tokens + self.cached,
            self.token_logprobs[:n],
            self.top_logprobs[:n],
            self.prompt_scores,
        )


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
