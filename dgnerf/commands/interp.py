"""`dgnerf interp --checkpoint C --dataset D --person-a A --person-b B --out grid.png`: identity and
expression interpolation grids (dgnerf.apps.interp) in one PNG: top, identity A -> B at the set's mean
expression; bottom, A's identity between A's two most different expressions; rows are views (yaw)."""
from __future__ import annotations

from dgnerf.apps.interp import interpolation_figure
from dgnerf.commands._common import check_out as _check_out
from dgnerf.commands._common import load_model
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.media import save_png


def run(args):
    _check_out(args.out, (".png",))
    if args.steps < 2:
        raise DgnerfError(f"--steps: expected >= 2, got {args.steps}")
    try:
        yaws = [float(v) for v in args.yaws.split(",") if v.strip()]
    except ValueError:
        raise DgnerfError(f"--yaws: expected comma-separated degrees like -25,0,25, got {args.yaws!r}") from None
    if not yaws:
        raise DgnerfError(f"--yaws: expected at least one angle, got {args.yaws!r}")
    model = load_model(args.checkpoint, args.device)
    ds = HeadDataset(args.dataset, check="none")
    if ds.identity_dim != model.cfg.identity_dim or ds.expression_dim != model.cfg.expression_dim:
        raise DgnerfError(f"--dataset {args.dataset}: codes are {ds.identity_dim}-d / {ds.expression_dim}-d, the checkpoint "
                          f"expects {model.cfg.identity_dim}-d / {model.cfg.expression_dim}-d")
    for flag, person in (("--person-a", args.person_a), ("--person-b", args.person_b)):
        if person not in ds.persons:
            have = ds.persons
            raise DgnerfError(f"{flag} {person!r}: not a person of {args.dataset} (it has {have[:12]}"
                              f"{'...' if len(have) > 12 else ''})")
    img = interpolation_figure(model, ds, args.person_a, args.person_b, steps=args.steps, yaws=yaws)
    save_png(args.out, img)
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]}: identity {args.person_a} -> {args.person_b} on top, "
          f"expression of {args.person_a} below; {len(yaws)} views x {args.steps} steps each)")
    return 0


def register(sub):
    p = sub.add_parser("interp", help="identity and expression interpolation grids (PNG)",
                       description="Identity (A -> B) and expression (A's two most different expressions) "
                                   "interpolation grids, rows = views.")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--dataset", required=True, metavar="D", help="dataset whose persons' codes are used")
    p.add_argument("--person-a", required=True, metavar="A")
    p.add_argument("--person-b", required=True, metavar="B")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--yaws", default="-25,0,25", help="views, comma-separated yaw degrees (default -25,0,25)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)
