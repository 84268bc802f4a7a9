"""The HTTP API over an Engine (starlette): OpenAI-style completions, models, health, metrics.

    POST /v1/completions   {"prompt": "..." | [ids], "max_tokens", "temperature", "top_p",
                            "top_k", "stop", "seed", "stream", "cache"}
    GET  /v1/models, /health, /metrics (Prometheus text)

Handlers run on the event loop; the engine runs in its own thread and hands events back with
`loop.call_soon_threadsafe`. A client that disconnects cancels its request (its slot is freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as e:  # an optional dependency
    message = f"serving needs starlette and uvicorn ({e}): pip install -e '.[serve]'"
    raise ImportError(message) from None

from yoco_jax.serve.engine import Closed, Engine, QueueFull, Request
from yoco_jax.serve.prefix import PrefixStore
from yoco_jax.serve.schema import ApiError, CompletionParams, parse_completion

RETRY_AFTER_S = 1
# The largest body read, per position of --max-len: a sentencepiece piece is at most 16
# characters (64 UTF-8 bytes) and a token id in JSON at most 8, so a prompt that fits the
# context fits this; anything larger is refused (413) before it is read whole or tokenized.
BODY_BYTES_PER_POSITION, BODY_BYTES_SLACK = 64, 1 << 16


def error_response(e: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _usage(result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def _chunk(meta: dict, text: str, finish: str | None, tokens=None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if tokens is not None:
        choice["token_ids"] = tokens  # an extension: the generated ids
    return {**meta, "choices": [choice]}


def _sse(data) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _read_json(request, limit: int):
    """The JSON body, read at most `limit` bytes far; an ApiError (413, or 400) otherwise."""
    too_large = ApiError(
        f"the request body exceeds {limit} bytes, more than a prompt of the "
        "server's --max-len needs",
        None,
        "body_too_large",
        413,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ApiError(f"the body is not valid JSON ({detail})", None, "bad_json") from None


async def _disconnected(request) -> None:
    """Returns when the client goes away (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, model_name: str, prefixes: PrefixStore | None = None) -> Starlette:
    """The ASGI app. Its lifespan starts the engine and, at shutdown (SIGTERM in uvicorn, after
    the in-flight requests are answered), drains and stops it."""
    prefixes = prefixes or PrefixStore(None, engine.model)
    tokenizer, vocab = engine.tokenizer, engine.model.config.vocab_size
    body_limit = BODY_BYTES_PER_POSITION * engine.max_len + BODY_BYTES_SLACK

    def build(p: CompletionParams, prefix) -> Request:
        if isinstance(p.prompt, str):
            if tokenizer is None:
                raise ApiError("this model has no tokenizer: give token ids", "prompt")
            tokens = tokenizer.encode(p.prompt)
        else:
            tokens = p.prompt
            if tokens and (min(tokens) < 0 or max(tokens) >= vocab):
                raise ApiError(f"token ids must lie in [0, {vocab})", "prompt", "invalid_value")
        top_k = 0 if p.top_k >= vocab else p.top_k  # keeping every token is no top-k at all
        req = Request(tokens, p.max_tokens, p.temperature, p.top_p, top_k, p.seed, p.stop, prefix)
        try:
            engine.check(req)
        except ValueError as e:
            raise ApiError(str(e), "prompt", "context_length_exceeded") from None
        return req

    async def completions(request):
        try:
            p = parse_completion(await _read_json(request, body_limit))
            prefix = None
            if p.cache is not None:
                try:
                    prefix = await run_in_threadpool(prefixes.load, p.cache)
                except (ValueError, OSError) as e:
                    raise ApiError(str(e), "cache", "invalid_cache") from None
            req = build(p, prefix)
        except ApiError as e:
            return error_response(e)
        queue, loop = asyncio.Queue(), asyncio.get_running_loop()
        wanted = ("delta", "done", "error") if p.stream else ("done", "error")

        def on_event(kind, data):
            if kind in wanted:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, data))

        req.on_event = on_event
        try:
            engine.submit(req)
        except (QueueFull, Closed) as e:
            busy = ApiError(
                f"server busy: {e}; retry later", None, "overloaded", 503, "server_error"
            )
            return error_response(busy, {"Retry-After": str(RETRY_AFTER_S)})
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
        }
        if p.stream:
            stream = _stream(req, queue, meta, p.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream")
        return await _collect(request, req, queue, meta)

    async def _stream(req, queue, meta, include_usage):
        try:
            while True:
                kind, data = await queue.get()
                if kind == "delta":
                    yield _sse(_chunk(meta, data[0], None, data[1]))
                    continue
                if kind == "done":
                    yield _sse(_chunk(meta, "", data.finish_reason))
                    if include_usage:
                        yield _sse({**meta, "choices": [], "usage": _usage(data)})
                else:
                    yield _sse(ApiError(data, None, "engine_error", 500, "server_error").body())
                yield "data: [DONE]\n\n"
                return
        finally:  # also when the client disconnects (the response task is cancelled)
            engine.cancel(req)

    async def _collect(request, req, queue, meta):
        watcher = asyncio.ensure_future(_disconnected(request))
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({watcher, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                engine.cancel(req)
                return Response(status_code=499)  # nobody reads it
            kind, data = getter.result()
            if kind == "error":
                return error_response(ApiError(data, None, "engine_error", 500, "server_error"))
            body = _chunk(meta, data.text, data.finish_reason, data.tokens)
            return JSONResponse({**body, "usage": _usage(data)})
        finally:
            watcher.cancel()
            getter.cancel()

    async def models(request):
        card = {
            "id": model_name,
            "object": "model",
            "created": 0,
            "owned_by": "yoco-jax",
            "max_model_len": engine.max_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(request):
        waiting, live = engine.load()
        return JSONResponse(
            {"status": "ok", "queue_depth": waiting, "live_slots": live, "slots": engine.slots}
        )

    async def metrics(request):
        text = engine.metrics.render(*engine.load())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await run_in_threadpool(engine.close)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
