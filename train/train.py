#!/usr/bin/env python
"""Training entry point (the same as `dgnerf train`), for torchrun:

    torchrun --nproc_per_node 2 train/train.py DATA --out runs/x --config train/configs/paper.json
"""
import sys

from dgnerf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
