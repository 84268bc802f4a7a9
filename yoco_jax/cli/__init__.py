"""Command-line entry points (the console scripts `yoco-*` and the root train.py/infer.py)."""
