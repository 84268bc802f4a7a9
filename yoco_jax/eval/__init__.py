"""Evaluations: needle in a haystack (`yoco-needle`)."""
