"""`dgnerf init-checkpoint`: a randomly initialised head model, so the commands work before any training."""
from __future__ import annotations

import os

from dgnerf.commands._common import check_seed
from dgnerf.errors import DgnerfError
from dgnerf.model.checkpoint import init_checkpoint


def run(args):
    check_seed(args.seed)
    out = args.out
    if not os.path.isdir(out):
        if not out.endswith(".safetensors"):
            raise DgnerfError(f"out {out!r}: expected a file ending in .safetensors (or an existing directory)")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise DgnerfError(f"out {out!r}: the directory {parent!r} does not exist")
    path = init_checkpoint(out, seed=args.seed, head_prior=not args.no_head_prior)
    print(f"wrote {path} (randomly initialised, untrained head model)")
    return 0


def register(sub):
    q = sub.add_parser("init-checkpoint", help="write a randomly initialised head checkpoint (default config)",
                       description="Write a randomly initialised (untrained) head model checkpoint, so the "
                                   "commands work before any training.")
    q.add_argument("out", help="output .safetensors file (or an existing directory)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-head-prior", action="store_true", help="plain random weights (density is fog)")
    q.set_defaults(func=run)
