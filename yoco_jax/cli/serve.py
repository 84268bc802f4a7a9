"""`yoco-serve` (`python -m yoco_jax.serve`): the OpenAI-compatible completions server. Its
command is yoco_jax/serve/__main__.py (an entry point like this folder's modules)."""

from yoco_jax.serve.__main__ import main

__all__ = ["main"]
