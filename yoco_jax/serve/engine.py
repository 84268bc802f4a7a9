"""The continuous-batching engine: S slots of one decode state, requests coming and going.

A request waits in a bounded queue, takes a free slot, is prefilled there as a single row (one
chunk per engine step, between decode blocks, so a long prompt never stalls the live rows for
long), is inserted into the batched state, and decodes with the others in jitted blocks of
`block` tokens. A row leaves at a stop token, a stop string or its budget (or when its client
goes away), and the next waiting request takes its slot.

The engine runs in its own thread (`start`); callers `submit` requests from any thread and
receive events through each request's `on_event(kind, data)` callback, called on the engine
thread: ("delta", (text, new token ids)), then exactly one final event: ("done", Result),
("error", message) or ("cancelled", None).

The engine holds slots, queues and text only: the decode step, the prefill chunks, the room
rule and the buckets are inference/'s, shared with `generate`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque

from yoco_jax.inference import placement
from yoco_jax.inference.decode_loop import check_room, idle_state
from yoco_jax.inference.plan import Buckets, check_positive
from yoco_jax.serve.metrics import Metrics
from yoco_jax.serve.prefix_cache import PrefixCache
from yoco_jax.serve.request import MAX_LOGPROBS, Closed, QueueFull, Request, Result
from yoco_jax.serve.row_prefill import prefill_compilations
from yoco_jax.serve.scheduler import Scheduler, check_serving_mesh

__all__ = ["Closed", "Engine", "QueueFull", "Request", "Result"]

_KNOBS = ("slots", "max_len", "queue_limit", "prefill_chunk", "block")


class Engine(Scheduler):
    def __init__(
        self,
        model,
        tokenizer,
        *,
        slots: int = 8,
        max_len: int = 2048,
        queue_limit: int = 64,
        prefill_chunk: int = 512,
        block: int = 4,
        prefix_cache_bytes: int = 0,
        mesh=None,
    ):
        for name, value in zip(_KNOBS, (slots, max_len, queue_limit, prefill_chunk, block)):
            check_positive(name, value)
        self.mesh = check_serving_mesh(model.config, mesh)
        params = placement.place_params(model.config, model.params, mesh)  # once
        self.model, self.tokenizer = dataclasses.replace(model, params=params), tokenizer
        self.slots, self.max_len, self.queue_limit = slots, max_len, queue_limit
        self.prefill_chunk, self.block = prefill_chunk, block
        self.buckets = Buckets.up_to(max_len)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.stop_ids = [] if tokenizer is None else [tokenizer.eos_id]
        self.state = self._empty_state()
        self.metrics = Metrics(slots)
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._free = list(range(slots))[::-1]
        self._live: dict[int, Request] = {}
        self._pending = None  # (slot, request, RowPrefill) being prefilled
        self._accepting, self._stopping, self._thread = True, False, None

    # --- called from any thread ---------------------------------------------------------

    def _empty_state(self):
        shape = (self.model.config, self.slots, self.max_len, self.block)
        return placement.place(idle_state(*shape, logprobs=MAX_LOGPROBS), self.mesh)

    def compile_plan(self) -> dict[str, int]:
        """The most compilations fresh prompts can cause, per jitted function."""
        rungs = self.buckets.length
        prefill = prefill_compilations(rungs, self.prefill_chunk)
        return {"prefill": prefill, "insert": len(rungs), "decode": 1}

    def check(self, req: Request) -> None:
        """A ValueError naming the problem when `req` cannot be served."""
        if not req.tokens and (req.prefix is None or req.prefix[1] is None):
            raise ValueError("the prompt is empty: give at least one token")
        if req.scores_prompt and req.prefix is not None:
            raise ValueError("echo with logprobs scores the prompt's own tokens: not with a cache")
        if req.max_tokens < (0 if req.echo else 1):
            raise ValueError("max_tokens must be >= 1 (0 only with echo: pure scoring)")
        check_room(
            [req.prefix_tokens + len(req.tokens)],
            [req.max_tokens],
            self.max_len,
            "the server's --max-len",
        )

    def submit(self, req: Request) -> None:
        """Queues `req`; QueueFull when the queue is full, Closed when draining."""
        self.check(req)
        with self._cv:
            if not self._accepting:
                raise Closed("the server is shutting down")
            # Requests the free slots take at the next step are not waiting: a burst fills
            # the slots first, then --queue-limit more.
            if len(self._waiting) >= self.queue_limit + len(self._free):
                self.metrics.finished("rejected")
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            req.submitted_at = time.monotonic()
            self._waiting.append(req)
            self._cv.notify()

    def cancel(self, req: Request) -> None:
        """Frees `req`'s queue place or slot at the next engine step (no-op when finished)."""
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    def load(self) -> tuple[int, int]:
        """(waiting requests, occupied slots)."""
        with self._cv:
            return len(self._waiting), len(self._live) + (self._pending is not None)

    def warmup(self) -> None:
        """Compiles every prompt rung's prefill, the inserts and the decode block (a one-token
        request per rung, on this thread), then forgets them in the metrics."""
        kept, self.prefix_cache = self.prefix_cache, PrefixCache(0)  # no hits: every shape
        for r in self.buckets.length:
            self.submit(Request([3] * max(r - 1, 1), max_tokens=1))
            self.run_until_idle()
        self.prefix_cache, self.metrics = kept, Metrics(self.slots)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="yoco-serve-engine", daemon=True)
        self._thread.start()

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stops taking requests; finishes the queued and live ones (or cancels them), then
        stops the thread."""
        with self._cv:
            self._accepting = False
            if not drain:
                pending = [] if self._pending is None else [self._pending[1]]
                for req in [*self._waiting, *pending, *self._live.values()]:
                    req.cancelled = True
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the engine thread ----------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self._waiting or self._live or self._pending)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._busy() and not self._stopping:
                    self._cv.wait()
                if not self._busy():
                    return
            self.step()

    def run_until_idle(self) -> None:
        """Steps on the calling thread until nothing is queued or live (no thread needed)."""
        while self._busy():
            self.step()
