"""The engine thread's work, one `step` at a time: drop cancelled requests, prefill about one
chunk of the request in admission, run one decode block over every live slot, and hand each
request its events (the Engine, serve/engine.py, holds the queues, the slots and the thread).
"""

from __future__ import annotations

import logging
import time
from collections import deque

import jax
import numpy as np

from yoco_jax.inference import placement
from yoco_jax.inference.decode_loop import decode, finish_rows, insert_row, ring_slice
from yoco_jax.serve.request import MAX_LOGPROBS, Request
from yoco_jax.serve.row_prefill import RowPrefill, start_row_prefill
from yoco_jax.serve.text import TextStream

log = logging.getLogger("yoco_jax.serve")


def check_serving_mesh(config, mesh):
    """The mesh the server runs on (None: one device), or a ValueError: the server splits a
    model over `tensor` only, since its one-row prefills cannot split over data or context."""
    placement.check_mesh(config, mesh)
    if mesh is not None and any(mesh.shape[a] > 1 for a in mesh.shape if a != "tensor"):
        raise ValueError(
            f"the server splits a model over the tensor axis only (--mesh tensor=N), got "
            f"{dict(mesh.shape)}: for more throughput run one server per device group"
        )
    return mesh


class Scheduler:
    """The step of an Engine (which sets every attribute used here)."""

    def step(self) -> None:
        """One round: drop cancelled requests, prefill (about one chunk), one decode block.
        Any error fails the requests involved, never the engine."""
        try:
            self._reap_cancelled()
            self._admit()
            if self._live:
                self._decode()
        except Exception as e:  # a decode failure: its rows are lost, the engine goes on
            log.exception("decode block failed")
            for slot, req in list(self._live.items()):
                self._release(slot)
                self._fail(req, f"the engine failed while decoding: {e}")
            self.state = self._empty_state()

    def _release(self, slot: int) -> None:
        self._live.pop(slot, None)
        with self._cv:
            self._free.append(slot)

    def _reap_cancelled(self) -> None:
        with self._cv:
            gone = [r for r in self._waiting if r.cancelled]
            self._waiting = deque(r for r in self._waiting if not r.cancelled)
        if self._pending is not None and self._pending[1].cancelled:
            gone.append(self._pending[1])
            self._release(self._pending[0])
            self._pending = None
        ended = np.zeros((self.slots,), bool)
        for slot, req in list(self._live.items()):
            if req.cancelled:
                gone.append(req)
                ended[slot] = True
                self._release(slot)
        if ended.any():
            self.state = finish_rows(self.state, ended)
        for req in gone:  # every request ends with exactly one final event
            self._emit(req, "cancelled", None)
            self.metrics.finished("cancelled")

    def _admit(self) -> None:
        """Prefill work of about one chunk (unlimited while no row decodes)."""
        budget = self.prefill_chunk
        while budget > 0 or not self._live:
            if self._pending is None:
                with self._cv:
                    if not self._free or not self._waiting:
                        return
                    req, slot = self._waiting.popleft(), self._free.pop()
                self._pending = (slot, req, None)
            slot, req, row = self._pending
            try:
                if row is None:
                    chunk, cache = self.prefill_chunk, self.prefix_cache
                    row = start_row_prefill(self.model, req, self.buckets, chunk, cache, self.mesh)
                    self._pending = (slot, req, row)
                if not row.done:
                    budget -= row.step()
                if row.done:
                    self._pending = None
                    req.prompt_scores = row.scores
                    if req.max_tokens == 0:  # pure scoring: nothing to decode
                        self._release(slot)
                        self._finish(req, "length", time.monotonic())
                    else:
                        self._insert(slot, req, row)
            except Exception as e:
                log.exception("prefill failed")
                self._pending = None
                self._release(slot)
                self._fail(req, f"prefill failed: {e}")

    def _insert(self, slot: int, req: Request, row: RowPrefill) -> None:
        one = placement.place(
            row.decode_state(req, self.block, self.max_len, MAX_LOGPROBS), self.mesh
        )
        self.state = insert_row(self.state, one, np.int32(slot))
        req.text = TextStream(self.tokenizer, req.stop)
        self._live[slot] = req

    def _decode(self) -> None:
        before = np.asarray(jax.device_get(self.state.n_out))
        self.state = decode(
            self.model, self.state, steps=self.block, stop_ids=self.stop_ids, mesh=self.mesh
        )
        s = self.state
        got = jax.device_get((s.tokens, s.logprobs, s.top_ids, s.top_logprobs, s.n_out))
        now = time.monotonic()
        ended = np.zeros((self.slots,), bool)
        for slot, req in list(self._live.items()):
            span = int(before[slot]), int(got[4][slot])
            new = [ring_slice(x[slot], *span) for x in got[:4]]
            if not len(new[0]):
                continue
            if req.first_token_at is None:
                req.first_token_at = now
                prompt = req.prefix_tokens + len(req.tokens)
                self.metrics.first_token(now - req.submitted_at, prompt)
            self.metrics.tokens(len(new[0]), now)
            delta, finish = req.take(*new, self.tokenizer, self.stop_ids)
            if delta is not None:
                self._emit(req, "delta", delta)
            if finish is not None:  # stop strings end rows the loop still thinks live
                ended[slot] = True
                self._release(slot)
                self._finish(req, finish, now)
        if ended.any():
            self.state = finish_rows(self.state, ended)

    def _finish(self, req: Request, finish: str, now: float) -> None:
        """The request's one "done" event."""
        self._emit(req, "done", req.result(finish, self.tokenizer))
        self.metrics.finished(finish, now - req.submitted_at)

    def _emit(self, req: Request, kind: str, data) -> None:
        try:
            if req.on_event is not None:
                req.on_event(kind, data)
        except Exception:  # the client is gone (closed loop): free its slot, nothing else
            req.cancelled = True

    def _fail(self, req: Request, message: str) -> None:
        self._emit(req, "error", message)
        self.metrics.finished("error")
