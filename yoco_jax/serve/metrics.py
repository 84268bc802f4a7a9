"""Serving counters and the Prometheus text format (no client library needed).

The engine thread records; the HTTP thread renders. One lock guards both.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

# Seconds: time to first token and whole-request latency.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10.0


class Histogram:
    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, x)] += 1
        self.sum += x
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*BUCKETS, "+Inf"), self.counts):
            total += n
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """Counters, gauges and histograms of one engine."""

    def __init__(self, slots: int):
        self.lock = threading.Lock()
        self.slots = slots
        self.requests = {}  # finish reason or outcome -> count
        self.prompt_tokens = 0
        self.generated = 0
        self.recent = deque()  # (time, tokens) of the last RATE_WINDOW_S seconds
        self.ttft = Histogram()
        self.latency = Histogram()

    def finished(self, outcome: str, latency_s: float | None = None) -> None:
        with self.lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1
            if latency_s is not None:
                self.latency.observe(latency_s)

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        with self.lock:
            self.ttft.observe(seconds)
            self.prompt_tokens += prompt_tokens

    def tokens(self, n: int, now: float | None = None) -> None:
        with self.lock:
            self.generated += n
            self.recent.append((now or time.monotonic(), n))

    def tokens_per_s(self, now: float | None = None) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        now = now or time.monotonic()
        with self.lock:
            while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
                self.recent.popleft()
            return sum(n for _, n in self.recent) / RATE_WINDOW_S

    def render(self, queue_depth: int, live: int, prefix=None) -> str:
        """Prometheus text; `prefix`: the engine's PrefixCache (its hits and memory)."""
        rate = self.tokens_per_s()
        gauges = {
            "yoco_queue_depth": queue_depth,
            "yoco_live_slots": live,
            "yoco_slots": self.slots,
            "yoco_tokens_per_second": f"{rate:.3f}",
        }
        counters = {
            "yoco_generated_tokens_total": self.generated,
            "yoco_prompt_tokens_total": self.prompt_tokens,
        }
        if prefix is not None:
            gauges["yoco_prefix_cache_bytes"] = prefix.bytes
            gauges["yoco_prefix_cache_entries"] = len(prefix)
            counters["yoco_prefix_cache_hits_total"] = prefix.hits
            counters["yoco_prefix_cache_misses_total"] = prefix.misses
            counters["yoco_prefix_cache_tokens_total"] = prefix.hit_tokens
        lines = []
        for kind, values in (("gauge", gauges), ("counter", counters)):
            for name, value in values.items():
                lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
        with self.lock:
            lines += ["# TYPE yoco_requests_total counter"]
            lines += [f'yoco_requests_total{{outcome="{k}"}} {v}' for k, v in self.requests.items()]
            lines += ["# TYPE yoco_time_to_first_token_seconds histogram"]
            lines += self.ttft.lines("yoco_time_to_first_token_seconds")
            lines += ["# TYPE yoco_request_latency_seconds histogram"]
            lines += self.latency.lines("yoco_request_latency_seconds")
        return "\n".join(lines) + "\n"
