"""Benchmarks of YOCO against the Transformer baseline: `python -m bench.suite --device cpu|gpu`."""
