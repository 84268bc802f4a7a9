"""Generate text with a YOCO checkpoint: `python infer.py --help` (the same as `yoco-infer`)."""

from yoco_jax.cli.infer import main

if __name__ == "__main__":
    main()
