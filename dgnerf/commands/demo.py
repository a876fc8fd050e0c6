"""`dgnerf demo`: build the built-in head set, train a small model on this CPU for a fixed number of steps, and
write the paper's story to out/ (renders, orbit video, interpolation grids, an unseen person fitted from one image
and driven by another, metrics.json)."""
from dgnerf.apps.demo import DEMO_MINUTES, DEMO_STEPS, DEMO_STEPS_BF16, run_demo


def register(sub):
    p = sub.add_parser("demo", help=f"the main job: built-in head set -> train a small model (~{DEMO_MINUTES + 2} min "
                                    "on a 2-core CPU) -> out/", description=__doc__)
    p.add_argument("--out", default="out", help="output directory (default out/)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps (default {DEMO_STEPS}, or {DEMO_STEPS_BF16} where training runs in bf16: "
                        "a CPU with bf16 matrix units (AMX) or CUDA; the result does not depend on the machine's speed)")
    p.add_argument("--minutes", type=float, default=None,
                   help="optional cap on the training time in minutes (then a busy machine trains fewer steps)")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium", "large"], help="built-in set size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda-perceptual", type=float, default=0.0, dest="lambda_perceptual",
                   help="VGG16 loss weight (default 0 in the demo: it triples the CPU time per step; the paper uses 10)")
    p.set_defaults(func=run)


def run(args):
    run_demo(out=args.out, steps=args.steps, minutes=args.minutes, size=args.size, seed=args.seed,
             lambda_perceptual=args.lambda_perceptual)
