"""The HTTP server: a real uvicorn server on a free port in a thread, a real httpx client.

One module-scoped server (2 slots for up to 16 concurrent requests) serves every test; each
response is checked against `generate` for its prompt alone.
"""

import asyncio
import functools
import json
import threading
import time

import httpx
import numpy as np
import pytest

import yoco_jax
from yoco_jax.data import demo_tokenizer
from yoco_jax.inference import generate, prefill, save_cache
from yoco_jax.serve.app import create_app
from yoco_jax.serve.background import BackgroundServer
from yoco_jax.serve.engine import Engine, Request
from yoco_jax.serve.prefix import PrefixStore

CHUNK, MAX_LEN, SLOTS = 32, 128, 2


@functools.cache
def tiny():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", dtype="float32", vocab_size=2048), 1)


@functools.cache
def expected(prompt, max_tokens, cache_file=None):
    """`generate` for one prompt alone (token tuple or text), greedy, as the server runs it."""
    model, tok = tiny(), demo_tokenizer()
    prompt = list(prompt) if isinstance(prompt, tuple) else prompt
    if cache_file is None:
        return generate(
            model, prompt, max_tokens, tokenizer=tok, prefill_chunk=CHUNK, max_len=MAX_LEN
        )
    cache = yoco_jax.inference.load_cache(cache_file, model.config)[0]
    return generate(model, prompt, max_tokens, tokenizer=tok, prefill_chunk=CHUNK, cache=cache)


class Server(BackgroundServer):
    def __init__(self, engine, cache_dir=None):
        self.engine = engine
        super().__init__(create_app(engine, "tiny", PrefixStore(cache_dir, engine.model)))


def new_engine(**kw):
    return Engine(
        tiny(), demo_tokenizer(), slots=SLOTS, max_len=MAX_LEN, prefill_chunk=CHUNK, block=4, **kw
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("caches")
    s = Server(new_engine(), cache_dir)
    s.cache_dir = cache_dir
    yield s
    s.stop()


def post(server, body, **kw):
    return httpx.post(server.url + "/v1/completions", json=body, timeout=120, **kw)


def wait_until(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def sse_events(lines):
    return [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]


def test_16_concurrent_greedy_requests_equal_generate_alone(server):
    rng = np.random.default_rng(0)
    lengths = [1, 3, 9, 15, 16, 17, 20, 31, 33, 40, 47, 60, 64, 70, 90, 110]
    prompts = [tuple(rng.integers(3, 2048, n).tolist()) for n in lengths]
    prompts[3] = "def f(x):\n    return"  # a text prompt among the ids
    budgets = [int(rng.integers(1, min(17, MAX_LEN - len(p) + 1))) for p in prompts]
    order = rng.permutation(16)

    async def one(client, i):
        prompt = prompts[i] if isinstance(prompts[i], str) else list(prompts[i])
        body = {"prompt": prompt, "max_tokens": budgets[i], "temperature": 0}
        return i, (await client.post(server.url + "/v1/completions", json=body)).json()

    async def all_at_once():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(one(client, int(i)) for i in order))

    for i, out in asyncio.run(all_at_once()):
        want = expected(prompts[i], budgets[i])
        choice = out["choices"][0]
        assert choice["token_ids"] == want.tokens, i
        assert (choice["text"], choice["finish_reason"]) == (want.text, want.finish_reason)
        n_prompt = len(demo_tokenizer().encode(prompts[i])) if i == 3 else len(prompts[i])
        assert out["usage"]["prompt_tokens"] == n_prompt
        assert out["usage"]["completion_tokens"] == len(want.tokens)
        assert out["usage"]["total_tokens"] == n_prompt + len(want.tokens)


@pytest.mark.parametrize("stop", [None, "cut"])
def test_stream_concatenates_to_the_text_with_usage(server, stop):
    prompt = "import os\nimport sys\n\ndef main():\n"
    want = expected(prompt, 24)
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0}
    if stop == "cut":  # a stop string from the middle of the greedy text, maybe across tokens
        stop = want.text[len(want.text) // 2 :][:3]
        body["stop"] = [stop, "never-there"]
    plain = post(server, body).json()
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=streamed, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = list(r.iter_lines())
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
    events = sse_events(lines)
    streamed = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    text = plain["choices"][0]["text"]
    assert streamed == text
    ids = sum((e["choices"][0].get("token_ids", []) for e in events if e["choices"]), [])
    assert ids == plain["choices"][0]["token_ids"]
    if stop is None:
        assert text == want.text and plain["choices"][0]["finish_reason"] == want.finish_reason
    else:
        assert text == want.text[: want.text.find(stop)]
        assert plain["choices"][0]["finish_reason"] == "stop"
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == plain["choices"][0]["finish_reason"] and set(finishes[:-1]) <= {None}
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]
    assert plain["usage"]["prompt_tokens"] == len(demo_tokenizer().encode(prompt))


class Blocker:
    """An engine-level request that holds the engine thread at each of its events until the
    test lets it go one event (`step`) or for good (`free`); it never finishes by itself."""

    def __init__(self, engine):
        self.engine, self.entered, self.free = engine, threading.Event(), threading.Event()
        self.permits = threading.Semaphore(0)
        self.req = Request([5, 6, 7], 100, on_event=self.on_event)
        engine.submit(self.req)
        assert self.entered.wait(120)

    def on_event(self, kind, data):
        self.entered.set()
        if not self.free.is_set():
            self.permits.acquire(timeout=120)

    def release(self):
        self.engine.cancel(self.req)
        self.free.set()
        self.permits.release(100)


def test_disconnect_mid_stream_frees_the_slot(server):
    engine = server.engine
    before = dict(engine.metrics.requests)
    body = {"prompt": [9, 8, 7], "max_tokens": 120, "temperature": 0, "stream": True}
    blocker, streaming = Blocker(engine), threading.Event()

    def step_until_streaming():  # one engine round (one decode block) at a time
        while not streaming.wait(0.05):
            blocker.permits.release()

    stepper = threading.Thread(target=step_until_streaming)
    try:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
            stepper.start()
            next(line for line in r.iter_lines() if line.startswith("data: "))
            streaming.set()
            stepper.join()
            time.sleep(0.2)  # the engine is held again at the blocker's next event
            assert engine.load() == (0, 2)
    finally:  # the client is gone: its request is cancelled, not run to 120 tokens
        streaming.set()
        blocker.release()
    wait_until(lambda: engine.load() == (0, 0))
    after = engine.metrics.requests
    assert after.get("cancelled", 0) - before.get("cancelled", 0) == 2
    assert after.get("length", 0) == before.get("length", 0)
    out = post(server, {"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0})
    assert out.status_code == 200
    assert out.json()["choices"][0]["token_ids"] == expected((1, 2, 3), 2).tokens


def test_full_queue_answers_503_then_serves(server):
    """A burst fills the free slots first, then --queue-limit more; the next is a 503."""
    engine = server.engine
    blocker = Blocker(engine)  # the engine thread waits: nothing leaves the queue
    engine.queue_limit = 1
    room = engine.queue_limit + SLOTS - 1  # the blocker holds one slot
    outs = [None] * room
    body = {"prompt": [4, 4], "max_tokens": 3, "temperature": 0}
    send = lambda i: outs.__setitem__(i, post(server, body))
    queued = [threading.Thread(target=send, args=(i,)) for i in range(room)]
    try:
        for t in queued:
            t.start()
        wait_until(lambda: engine.load()[0] == room)
        busy = post(server, {"prompt": [4, 4], "max_tokens": 3})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "overloaded"
    finally:
        engine.queue_limit = 64
        blocker.release()
    for t in queued:
        t.join(120)
    for out in outs:
        assert out.status_code == 200
        assert out.json()["choices"][0]["token_ids"] == expected((4, 4), 3).tokens


BAD = [
    ("{not json", None),
    ({"prompt": "x", "foo": 1}, "foo"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": list(range(3, 4 + MAX_LEN)), "max_tokens": 1}, "prompt"),
    ({"prompt": [5] * 100, "max_tokens": 40}, "prompt"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "seed": "one"}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "n": SLOTS + 1}, "n"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 5000]}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": "x", "cache": "../outside.npz"}, "cache"),
    ({"prompt": "x", "cache": "missing.npz"}, "cache"),
    ([1, 2], None),
]


def test_bad_requests_answer_400_and_the_server_keeps_serving(server):
    (server.cache_dir.parent / "outside.npz").write_bytes(b"")
    for body, param in BAD:
        kw = {"content": body} if isinstance(body, str) else {"json": body}
        r = httpx.post(server.url + "/v1/completions", timeout=60, **kw)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), body
    out = post(server, {"prompt": [7, 7, 7], "max_tokens": 3, "temperature": 0})
    assert out.json()["choices"][0]["token_ids"] == expected((7, 7, 7), 3).tokens


def test_prompt_cache_file_continues_without_the_document(server):
    model, rng = tiny(), np.random.default_rng(5)
    doc, question = rng.integers(3, 2048, 40).tolist(), rng.integers(3, 2048, 6).tolist()
    logits, cache = prefill(model, [doc], max_len=64, prefill_chunk=CHUNK)
    path = save_cache(
        server.cache_dir / "docs" / "doc.npz", cache, model.config, logits, params=model.params
    )
    out = post(
        server, {"prompt": question, "max_tokens": 8, "temperature": 0, "cache": "docs/doc.npz"}
    ).json()
    assert out["choices"][0]["token_ids"] == expected(tuple(question), 8, str(path)).tokens
    assert out["usage"]["prompt_tokens"] == 46
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 40
    # No prompt at all: continue the document itself from its saved last logits.
    out = post(server, {"prompt": [], "max_tokens": 8, "temperature": 0, "cache": "docs/doc.npz"})
    assert out.json()["choices"][0]["token_ids"] == expected(tuple(doc), 8).tokens


def test_models_health_metrics(server):
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == MAX_LEN
    assert httpx.get(server.url + "/health").json() == {
        "status": "ok",
        "queue_depth": 0,
        "live_slots": 0,
        "slots": SLOTS,
    }
    text = httpx.get(server.url + "/metrics").text
    names = ["yoco_queue_depth 0", "yoco_live_slots 0", "yoco_tokens_per_second"]
    names += ["yoco_time_to_first_token_seconds_count", "yoco_requests_total{outcome="]
    for name in names:
        assert name in text


def test_shutdown_drains_in_flight_requests():
    s = Server(new_engine())
    body = {"prompt": [3, 1, 4], "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        stopper = threading.Thread(target=s.stop)
        stopper.start()  # SIGTERM: the listening socket closes, the stream runs to its end
        events = sse_events([first, *lines])
    stopper.join(120)
    assert not s.thread.is_alive() and not s.engine._thread.is_alive()
    assert "".join(e["choices"][0]["text"] for e in events) == expected((3, 1, 4), 60).text
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_command_line_errors(capsys, tmp_path):
    from yoco_jax.cli.serve import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    tiny().save_official(tmp_path / "ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "ckpt"), "--slots", "0"])
    assert exit_info.value.code == 2 and "--slots: 0 must be a positive" in capsys.readouterr().err
