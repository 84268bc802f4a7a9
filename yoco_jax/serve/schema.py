"""Validation of `POST /v1/completions` bodies into engine settings, with OpenAI-style errors.

Unknown fields, wrong types and out-of-range values are errors that name the field; OpenAI
fields this server does not implement are accepted only at their neutral value (n=1, echo=false,
...), so clients that always send them keep working.
"""

from __future__ import annotations

import dataclasses
import math
import secrets


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
    prompt: str | list[int]
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


# Fields accepted only at these values (their OpenAI defaults): the feature is not implemented.
NEUTRAL = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (None,),
    "suffix": (None,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": (None, {}),
}
KNOWN = {f.name for f in dataclasses.fields(CompletionParams)} | set(NEUTRAL) | {"user"}
KNOWN = (KNOWN | {"stream_options"}) - {"include_usage"}  # that one lives in stream_options


def _int(body, name, default, low):
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


def _prompt(x, cached: bool):
    """Text or ids; empty only after a prompt cache (which then continues by itself)."""
    if isinstance(x, list) and len(x) == 1 and isinstance(x[0], (str, list)):
        x = x[0]  # a batch of one
    if isinstance(x, (str, list)) and not x and not cached:
        raise ApiError("prompt is empty: give some text or token ids", "prompt", "empty")
    if isinstance(x, str):
        return _unicode(x, "prompt")
    if isinstance(x, list) and all(type(t) is int for t in x):
        return x
    raise ApiError(
        "prompt must be a non-empty string or a non-empty list of token ids "
        "(one prompt per request)",
        "prompt",
        "invalid_type",
    )


def _unicode(text: str, name: str) -> str:
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
        _unicode(s, "stop")
    if len(stops) > 4:
        raise ApiError(f"stop holds {len(stops)} strings; at most 4 are allowed", "stop")
    return tuple(stops)


def parse_completion(body) -> CompletionParams:
    """The settings of a completion request, or an ApiError naming the faulty field."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    for name in body:
        if name not in KNOWN:
            raise ApiError(f"unknown field {name!r}", name, "unknown_field")
    for name, allowed in NEUTRAL.items():
        if name in body and body[name] not in allowed:
            raise ApiError(
                f"{name}={body[name]!r} is not supported by this server", name, "unsupported"
            )
    if "prompt" not in body:
        raise ApiError("prompt is required", "prompt", "missing")
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise ApiError(
            f"temperature={temperature} must be >= 0 (0 = greedy)", "temperature", "invalid_value"
        )
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise ApiError(f"top_p={top_p} must lie in (0, 1]", "top_p", "invalid_value")
    seed = body.get("seed")
    seed = secrets.randbits(62) if seed is None else _int(body, "seed", 0, 0)
    if seed >= 2**63:
        raise ApiError(f"seed={seed} must be < 2**63", "seed", "invalid_value")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError('stream_options must be {"include_usage": bool}', "stream_options")
    for name, value in [
        ("stream", body.get("stream", False)),
        ("include_usage", options.get("include_usage", False)),
    ]:
        if not isinstance(value, bool):
            raise ApiError(f"{name} must be true or false, got {value!r}", name, "invalid_type")
    for name in ("cache", "model", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ApiError(f"{name} must be a string", name, "invalid_type")
    prompt = _prompt(body["prompt"], body.get("cache") is not None)
    return CompletionParams(
        prompt=prompt,
        max_tokens=_int(body, "max_tokens", 16, 1),
        temperature=temperature,
        top_p=top_p,
        top_k=max(_int(body, "top_k", 0, -1), 0),
        seed=seed,
        stop=_stop(body.get("stop")),
        stream=body.get("stream", False),
        include_usage=options.get("include_usage", False),
        cache=body.get("cache"),
        model=body.get("model"),
    )
