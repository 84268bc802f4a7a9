"""Validation of `POST /v1/completions` (and the shared part of chat) bodies into engine
settings, with OpenAI-style errors.

Unknown fields, wrong types and out-of-range values are errors that name the field; an explicit
null is the field's default; OpenAI fields this server does not implement (penalties,
logit_bias, suffix, best_of) are accepted only at their neutral value, so clients that always
send them keep working.
"""

from __future__ import annotations

import dataclasses
import math
import secrets

from yoco_jax.serve.request import MAX_LOGPROBS


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = (
            message,
            param,
            code,
            status,
            kind,
        )

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass
class CompletionParams:
    prompts: list  # one or more prompts, each text or token ids
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # from stream_options
    cache: str | None = None
    model: str | None = None
    n: int = 1
    echo: bool = False
    logprobs: int | None = None


# Fields accepted only at these values (their OpenAI defaults): the feature is not implemented.
NEUTRAL = {
    "best_of": (1,),
    "suffix": (None,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": (None, {}),
}
KNOWN = {f.name for f in dataclasses.fields(CompletionParams)} | set(NEUTRAL) | {"user", "prompt"}
KNOWN = (KNOWN | {"stream_options"}) - {"include_usage", "prompts"}  # in stream_options / prompt
MAX_PROMPTS = 64  # prompts in one request


def int_field(body, name, default, low):
    x = body.get(name, default)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ApiError(f"{name} must be an integer, got {x!r}", name, "invalid_type")
    if x < low:
        raise ApiError(f"{name}={x} must be >= {low}", name, "invalid_value")
    return x


def _number(body, name, default):
    x = body.get(name, default)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ApiError(f"{name} must be a finite number, got {x!r}", name, "invalid_type")
    return float(x)


def _prompts(x, cached: bool) -> list:
    """One prompt (text or ids) or a list of them; empty only after a prompt cache (which
    then continues by itself)."""
    is_ids = lambda v: isinstance(v, list) and all(type(t) is int for t in v)
    one = isinstance(x, str) or is_ids(x)
    many = isinstance(x, list) and x and all(isinstance(v, str) or is_ids(v) for v in x)
    if not (one or many):
        raise ApiError(
            "prompt must be a string, a list of token ids, or a list of either (a batch)",
            "prompt",
            "invalid_type",
        )
    prompts = [x] if one else list(x)
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(f"prompt holds {len(prompts)} prompts; at most {MAX_PROMPTS}", "prompt")
    for p in prompts:
        if not p and not cached:
            raise ApiError("prompt is empty: give some text or token ids", "prompt", "empty")
        if isinstance(p, str):
            check_text(p, "prompt")
    return prompts


def check_text(text: str, name: str) -> str:
    """`text`, unless it holds a lone surrogate (valid JSON, but no text to encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            f"{name} holds a lone surrogate ({text[e.start]!r} at character "
            f"{e.start}): send valid Unicode",
            name,
            "invalid_value",
        ) from None
    return text


def _stop(x) -> tuple[str, ...]:
    stops = () if x is None else (x,) if isinstance(x, str) else x
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError("stop must be a string or a list of non-empty strings", "stop")
    for s in stops:
        check_text(s, "stop")
    if len(stops) > 4:
        raise ApiError(f"stop holds {len(stops)} strings; at most 4 are allowed", "stop")
    return tuple(stops)


def parse_completion(body) -> CompletionParams:
    """The settings of a completion request, or an ApiError naming the faulty field. An
    explicit null means the field's default, as in OpenAI's API."""
    body = body_fields(body)
    if "prompt" not in body:
        raise ApiError("prompt is required", "prompt", "missing")
    prompts = _prompts(body["prompt"], body.get("cache") is not None)
    common = shared_fields(body)
    echo = _bool(body, "echo")
    logprobs = None if "logprobs" not in body else int_field(body, "logprobs", 0, 0)
    if logprobs is not None and logprobs > MAX_LOGPROBS:
        raise ApiError(f"logprobs={logprobs} must lie in [0, {MAX_LOGPROBS}]", "logprobs")
    max_tokens = int_field(body, "max_tokens", 16, 0 if echo else 1)
    return CompletionParams(
        prompts=prompts,
        max_tokens=max_tokens,
        echo=echo,
        logprobs=logprobs,
        cache=body.get("cache"),
        **common,
    )


def body_fields(body) -> dict:
    """The body as a dict without null fields, unknown and unsupported fields refused."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    for name in body:
        if name not in KNOWN:
            raise ApiError(f"unknown field {name!r}", name, "unknown_field")
    for name, allowed in NEUTRAL.items():
        if name in body and body[name] not in allowed:
            raise ApiError(
                f"{name}={body[name]!r} is not supported by this server", name, "unsupported"
            )
    for name in ("cache", "model", "user"):
        if name in body and not isinstance(body[name], str):
            raise ApiError(f"{name} must be a string", name, "invalid_type")
    return body


def _bool(body, name, default=False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(f"{name} must be true or false, got {value!r}", name, "invalid_type")
    return value


def shared_fields(body) -> dict:
    """The fields completions and chat share: sampling, stop, stream, n, model."""
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise ApiError(
            f"temperature={temperature} must be >= 0 (0 = greedy)", "temperature", "invalid_value"
        )
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise ApiError(f"top_p={top_p} must lie in (0, 1]", "top_p", "invalid_value")
    seed = body.get("seed")
    seed = secrets.randbits(62) if seed is None else int_field(body, "seed", 0, 0)
    if seed >= 2**63:
        raise ApiError(f"seed={seed} must be < 2**63", "seed", "invalid_value")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError('stream_options must be {"include_usage": bool}', "stream_options")
    return dict(
        temperature=temperature,
        top_p=top_p,
        top_k=max(int_field(body, "top_k", 0, -1), 0),
        seed=seed,
        stop=_stop(body.get("stop")),
        stream=_bool(body, "stream"),
        include_usage=_bool(options, "include_usage"),
        model=body.get("model"),
        n=int_field(body, "n", 1, 1),
    )
