"""What every route shares: starlette (imported here, with the install hint when missing),
reading a bounded JSON body, OpenAI-style error responses, server-sent events, and noticing a
client that went away."""

from __future__ import annotations

import json

try:  # the one place serving imports its optional dependency
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as e:
    message = f"serving needs starlette and uvicorn ({e}): pip install -e '.[serve]'"
    raise ImportError(message) from None

from yoco_jax.serve.schema import ApiError

__all__ = [
    "JSONResponse",
    "PlainTextResponse",
    "Response",
    "Route",
    "Starlette",
    "StreamingResponse",
    "disconnected",
    "error_response",
    "read_json",
    "run_in_threadpool",
    "sse",
]


def error_response(e: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def sse(data) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def read_json(request, limit: int):
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


async def disconnected(request) -> None:
    """Returns when the client goes away (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
