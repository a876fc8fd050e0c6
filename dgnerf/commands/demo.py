"""`dgnerf demo`: build the built-in head set, train a small model on this CPU, write pictures to out/."""

from dgnerf.apps.demo import run_demo


def register(sub):
    p = sub.add_parser("demo", help="the main job: built-in head set -> train a small model (~10 min on a CPU) -> out/",
                       description=__doc__)
    p.add_argument("--out", default="out", help="output directory (default out/)")
    p.add_argument("--minutes", type=float, default=6.5,
                   help="training time budget in minutes (default 6.5: with setup, the whole demo stays under 10)")
    p.add_argument("--size", default="small", choices=["tiny", "small", "medium", "large"], help="built-in set size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda-perceptual", type=float, default=0.0, dest="lambda_perceptual",
                   help="VGG16 loss weight (default 0 in the demo: it triples the CPU time per step; the paper uses 10)")
    p.set_defaults(func=run)


def run(args):
    run_demo(out=args.out, minutes=args.minutes, size=args.size, seed=args.seed, lambda_perceptual=args.lambda_perceptual)
