"""`dgnerf init-checkpoint`: a randomly initialised head model, so the commands work before any training."""
from __future__ import annotations

from dgnerf.model.checkpoint import init_checkpoint


def run(args):
    path = init_checkpoint(args.out, seed=args.seed, head_prior=not args.no_head_prior)
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
