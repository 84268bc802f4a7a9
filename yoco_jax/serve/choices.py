"""One API call as engine requests, and OpenAI's response shapes.

A call of P prompts with `n` choices each becomes P x n engine requests (choice i * n + j:
prompt i drawing from key j of the seed, as row j of `generate` would); their events come back
through one asyncio queue, tagged with the choice index. Choices after the first of a prompt
start from the prefix cache's entry at that prompt's end, so a prompt is prefilled once.
"""

from __future__ import annotations

import asyncio

from yoco_jax.serve.http import Response, disconnected, error_response, sse
from yoco_jax.serve.request import Closed, QueueFull, Request, Result
from yoco_jax.serve.schema import ApiError

RETRY_AFTER_S = 1

FINAL = ("done", "error", "cancelled")


class Call:
    """The engine requests of one API call; `stream` also forwards "delta" events."""

    def __init__(self, engine, requests: list[Request], stream: bool):
        self.engine, self.requests = engine, requests
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        wanted = ("delta", *FINAL) if stream else FINAL
        for index, req in enumerate(requests):

            def on_event(kind, data, index=index):
                if kind in wanted:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (index, kind, data))

            req.on_event = on_event

    def submit(self) -> None:
        """Queues every request, or none: QueueFull / Closed cancel those already queued."""
        done = []
        try:
            for req in self.requests:
                self.engine.submit(req)
                done.append(req)
        except (QueueFull, Closed):
            for req in done:
                self.engine.cancel(req)
            raise

    def cancel(self) -> None:
        for req in self.requests:
            self.engine.cancel(req)

    async def events(self):
        """(choice index, kind, data) until every choice has ended."""
        left = len(self.requests)
        while left:
            index, kind, data = await self.queue.get()
            left -= kind in FINAL
            yield index, kind, data

    async def results(self) -> list[tuple[str, object]]:
        """(kind, data) of each choice's final event, in choice order."""
        out: list = [None] * len(self.requests)
        async for index, kind, data in self.events():
            out[index] = (kind, data)
        return out

    async def stream(self, piece, first, include_usage: bool, head: dict, n: int):
        """Server-sent events: `first` chunks, then each choice's deltas and end (as
        `piece(index, text, finish, ids)` builds them), usage, [DONE]."""
        try:
            for chunk in first:
                yield sse(chunk)
            results = [None] * len(self.requests)
            async for index, kind, data in self.events():
                if kind == "delta":
                    yield sse(piece(index, data[0], None, data[1]))
                elif kind == "done":
                    results[index] = data
                    yield sse(piece(index, "", data.finish_reason))
                elif kind == "error":
                    yield sse(ApiError(data, None, "engine_error", 500, "server_error").body())
                    self.cancel()
            if include_usage and all(results):
                yield sse({**head, "choices": [], "usage": usage(results, n)})
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects (the response task is cancelled)
            self.cancel()

    async def collect(self, request):
        """Every choice's Result, or the Response that ends the call early."""
        watcher = asyncio.ensure_future(disconnected(request))
        getter = asyncio.ensure_future(self.results())
        try:
            await asyncio.wait({watcher, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                self.cancel()
                return Response(status_code=499)  # nobody reads it
            results = getter.result()
            for kind, data in results:
                if kind == "error":
                    return error_response(ApiError(data, None, "engine_error", 500, "server_error"))
                if kind == "cancelled":
                    busy = ApiError(
                        "the server is shutting down; retry later",
                        None,
                        "overloaded",
                        503,
                        "server_error",
                    )
                    return error_response(busy, {"Retry-After": str(RETRY_AFTER_S)})
            return [data for _, data in results]
        finally:
            watcher.cancel()
            getter.cancel()


def usage(results: list[Result], n: int) -> dict:
    """Token counts: each prompt once (its first choice), every choice's completion."""
    prompts = results[::n]
    prompt_tokens = sum(r.prompt_tokens for r in prompts)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in prompts)},
    }


def _texts(tokenizer, ids) -> list[str]:
    return [tokenizer.token_text(t) if tokenizer is not None else str(t) for t in ids]


def _top(tokenizer, pairs, chosen: tuple[int, float]) -> dict[str, float]:
    """A position's alternatives as {token text: log-prob}, the chosen token always among them
    (so a client can tell whether it was the most likely)."""
    top = {}
    for token, logp in [*pairs, chosen]:
        top.setdefault(_texts(tokenizer, [token])[0], float(logp))
    return top


def logprobs_block(req: Request, result: Result, tokenizer, offset: int) -> dict:
    """OpenAI's completions `logprobs`: tokens, token_logprobs (null for the first prompt
    token), top_logprobs (null there too), text_offset; the prompt's first when echoed."""
    ids, logps, tops = [], [], []
    if req.echo:
        scores, k = result.prompt_scores, req.logprobs
        ids, logps, tops = list(req.tokens), [None], [None]
        for p in range(len(req.tokens) - 1):
            pairs = zip(scores.top_ids[0, p, :k].tolist(), scores.top_logp[0, p, :k].tolist())
            chosen = (req.tokens[p + 1], float(scores.logp[0, p]))
            logps.append(chosen[1])
            tops.append(_top(tokenizer, pairs, chosen))
    for t, (token, logp) in enumerate(zip(result.tokens, result.token_logprobs)):
        ids.append(token)
        logps.append(logp)
        tops.append(_top(tokenizer, result.top_logprobs[t], (token, logp)))
    texts = _texts(tokenizer, ids)
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {"tokens": texts, "token_logprobs": logps, "top_logprobs": tops, "text_offset": offsets}


def completion_choice(index: int, req: Request, result: Result, tokenizer, prompt_text: str):
    """One choice of a (non-streamed) completion."""
    logprobs = None
    if req.logprobs is not None:
        logprobs = logprobs_block(req, result, tokenizer, 0 if req.echo else len(prompt_text))
    return {
        "index": index,
        "text": (prompt_text if req.echo else "") + result.text,
        "logprobs": logprobs,
        "finish_reason": result.finish_reason,
        "token_ids": result.tokens,  # an extension: the generated ids
    }


def chat_choice(index: int, result: Result) -> dict:
    message = {"role": "assistant", "content": result.text}
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": result.finish_reason,
    }
