"""The HTTP API over an Engine (starlette): OpenAI-style completions and chat, the tokenizer,
models, health, metrics.

    POST /v1/completions       {"prompt": "..." | [ids] | a list of either, "max_tokens", "n",
                                "temperature", "top_p", "top_k", "stop", "seed", "stream",
                                "echo", "logprobs", "cache"}
    POST /v1/chat/completions  {"messages": [{"role", "content"}], ...the same sampling fields}
    GET  /tokenizer_info, POST /tokenize, /detokenize (serve/tokenizer_api.py)
    GET  /v1/models, /health, /metrics (Prometheus text)

Handlers run on the event loop; the engine runs in its own thread and hands events back with
`loop.call_soon_threadsafe`. A client that disconnects cancels its requests (slots freed).
"""

from __future__ import annotations

import contextlib
import time
import uuid

from yoco_jax.serve.chat import ChatTemplate, parse_chat
from yoco_jax.serve.choices import RETRY_AFTER_S, Call, chat_choice, completion_choice, usage
from yoco_jax.serve.engine import Closed, Engine, QueueFull, Request
from yoco_jax.serve.http import (
    JSONResponse,
    PlainTextResponse,
    Response,
    Route,
    Starlette,
    StreamingResponse,
    error_response,
    read_json,
    run_in_threadpool,
)
from yoco_jax.serve.prefix import PrefixStore
from yoco_jax.serve.schema import ApiError, parse_completion
from yoco_jax.serve.tokenizer_api import tokenizer_routes

# The largest body read, per position of --max-len: a sentencepiece piece is at most 16
# characters (64 UTF-8 bytes) and a token id in JSON at most 8, so a prompt that fits the
# context fits this; anything larger is refused (413) before it is read whole or tokenized.
BODY_BYTES_PER_POSITION, BODY_BYTES_SLACK = 64, 1 << 16


def create_app(
    engine: Engine,
    model_name: str,
    prefixes: PrefixStore | None = None,
    chat_template: ChatTemplate | None = None,
) -> Starlette:
    """The ASGI app. Its lifespan starts the engine and, at shutdown (SIGTERM in uvicorn, after
    the in-flight requests are answered), drains and stops it."""
    prefixes = prefixes or PrefixStore(None, engine.model)
    tokenizer, vocab = engine.tokenizer, engine.model.config.vocab_size
    template = chat_template or ChatTemplate(None, tokenizer)
    body_limit = BODY_BYTES_PER_POSITION * engine.max_len + BODY_BYTES_SLACK

    def tokens_of(prompt) -> list[int]:
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ApiError("this model has no tokenizer: give token ids", "prompt")
            return tokenizer.encode(prompt)
        if prompt and (min(prompt) < 0 or max(prompt) >= vocab):
            raise ApiError(f"token ids must lie in [0, {vocab})", "prompt", "invalid_value")
        return prompt

    def fan_out(p, prompts: list, prefix=None, echo=False, logprobs=None) -> list[Request]:
        """n engine requests per prompt, each checked (a 400 before any is queued)."""
        if p.model is not None and p.model != model_name:
            raise ApiError(
                f"the model {p.model!r} does not exist: this server serves {model_name!r}",
                "model",
                "model_not_found",
                404,
            )
        if p.n > engine.slots:
            raise ApiError(f"n={p.n} exceeds the server's {engine.slots} slots", "n")
        if p.stream and logprobs is not None:
            raise ApiError("logprobs are not streamed: ask without stream", "logprobs")
        top_k = 0 if p.top_k >= vocab else p.top_k  # keeping every token is no top-k at all
        reqs = []
        for prompt in prompts:
            tokens = tokens_of(prompt)
            for j in range(p.n):
                req = Request(
                    tokens,
                    p.max_tokens,
                    p.temperature,
                    p.top_p,
                    top_k,
                    p.seed,
                    p.stop,
                    prefix,
                    index=j,
                    logprobs=logprobs,
                    echo=echo,
                )
                try:
                    engine.check(req)
                except ValueError as e:
                    raise ApiError(str(e), "prompt", "context_length_exceeded") from None
                reqs.append(req)
        return reqs

    def start(reqs, stream: bool):
        call = Call(engine, reqs, stream)
        try:
            call.submit()
        except (QueueFull, Closed) as e:
            busy = ApiError(
                f"server busy: {e}; retry later", None, "overloaded", 503, "server_error"
            )
            return None, error_response(busy, {"Retry-After": str(RETRY_AFTER_S)})
        return call, None

    def meta(kind: str) -> dict:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        created = int(time.time())
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": created,
            "model": model_name,
        }

    async def completions(request):
        try:
            p = parse_completion(await read_json(request, body_limit))
            prefix = None
            if p.cache is not None:
                try:
                    prefix = await run_in_threadpool(prefixes.load, p.cache)
                except (ValueError, OSError) as e:
                    raise ApiError(str(e), "cache", "invalid_cache") from None
            reqs = fan_out(p, p.prompts, prefix, p.echo, p.logprobs)
        except ApiError as e:
            return error_response(e)
        call, busy = start(reqs, p.stream)
        if busy is not None:
            return busy
        prompt_texts = [_prompt_text(r) for r in reqs]
        head = meta("text_completion")

        def piece(index, text, finish=None, ids=None):
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice | ({} if ids is None else {"token_ids": ids})]}

        if p.stream:
            first = [piece(i, t) for i, t in enumerate(prompt_texts)] if p.echo else []
            events = call.stream(piece, first, p.include_usage, head, p.n)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await call.collect(request)
        if isinstance(results, Response):
            return results
        choices = [
            completion_choice(i, r, res, tokenizer, prompt_texts[i])
            for i, (r, res) in enumerate(zip(reqs, results))
        ]
        return JSONResponse({**head, "choices": choices, "usage": usage(results, p.n)})

    def _prompt_text(req: Request) -> str:
        return "" if tokenizer is None else tokenizer.decode(req.tokens)

    async def chat(request):
        try:
            p = parse_chat(await read_json(request, body_limit))
            if tokenizer is None:
                raise ApiError("chat needs a tokenizer: start the server with --tokenizer")
            reqs = fan_out(p, [template.render(p.messages)])
        except ApiError as e:
            return error_response(e)
        call, busy = start(reqs, p.stream)
        if busy is not None:
            return busy
        head = meta("chat.completion.chunk" if p.stream else "chat.completion")

        def piece(index, text, finish=None, ids=None):
            delta = {"content": text} if text or finish is None else {}
            return {
                **head,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        if p.stream:
            hello = [
                {
                    **head,
                    "choices": [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
                for i in range(len(reqs))
            ]
            events = call.stream(piece, hello, p.include_usage, head, p.n)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await call.collect(request)
        if isinstance(results, Response):
            return results
        choices = [chat_choice(i, res) for i, res in enumerate(results)]
        return JSONResponse({**head, "choices": choices, "usage": usage(results, p.n)})

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
        text = engine.metrics.render(*engine.load(), engine.prefix_cache)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await run_in_threadpool(engine.close)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        *tokenizer_routes(tokenizer, template.source, engine.max_len, body_limit),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
