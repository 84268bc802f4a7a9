"""Generate text with a YOCO checkpoint (see yoco_jax/inference/cli.py, or --help)."""

from yoco_jax.inference.cli import main

if __name__ == "__main__":
    main()
