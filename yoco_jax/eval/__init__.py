"""Evaluations: needle in a haystack (`python -m yoco_jax.eval.needle`)."""
