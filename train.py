"""Pretrain a YOCO model: `python train.py --help` (the same as the `yoco-train` command)."""

from yoco_jax.cli.train import main

if __name__ == "__main__":
    main()
