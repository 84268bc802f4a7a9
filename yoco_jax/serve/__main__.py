"""`python -m yoco_jax.serve`: the same as `yoco-serve` (the command is yoco_jax/cli/serve.py)."""

from yoco_jax.cli.serve import main

if __name__ == "__main__":
    main()
