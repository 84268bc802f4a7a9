"""Serving: a continuous-batching engine (slots, prefill-insert-decode) and an OpenAI-style HTTP
API (`yoco-serve`; the HTTP part needs `pip install -e '.[serve]'`)."""

from yoco_jax.serve.engine import Closed, Engine, QueueFull, Request, Result

__all__ = ["Closed", "Engine", "QueueFull", "Request", "Result"]
