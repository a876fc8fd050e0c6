"""`dgnerf interp --checkpoint C --dataset D --person-a A --person-b B --out grid.png`: identity and
expression interpolation grids (dgnerf.apps.interp) in one PNG: top, identity A -> B at the set's mean
expression; bottom, A's identity between A's two most different expressions; rows are views (yaw)."""
from __future__ import annotations

from dgnerf.apps.interp import interpolation_figure
import math

from dgnerf.commands._common import check_dataset_dir, check_int, load_model, resolve_device
from dgnerf.commands._common import check_out as _check_out
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.media import save_png

MAX_STEPS = 64
MAX_VIEWS = 16


def parse_yaws(text: str) -> list[float]:
    """--yaws: comma-separated finite degrees."""
    try:
        yaws = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DgnerfError(f"--yaws: expected comma-separated degrees like -25,0,25, got {text!r}") from None
    if not yaws:
        raise DgnerfError(f"--yaws: expected at least one angle, got {text!r}")
    if len(yaws) > MAX_VIEWS:
        raise DgnerfError(f"--yaws: at most {MAX_VIEWS} views, got {len(yaws)}")
    bad = [v for v in yaws if not math.isfinite(v)]
    if bad:
        raise DgnerfError(f"--yaws: expected finite angles in degrees, got {bad[0]!r} in {text!r}")
    return yaws


def run(args):
    # every flag before the model is loaded
    _check_out(args.out, (".png",))
    check_int(args.steps, "--steps", 2, MAX_STEPS, "columns per grid")
    yaws = parse_yaws(args.yaws)
    resolve_device(args.device)
    check_dataset_dir(args.dataset)
    model = load_model(args.checkpoint, args.device)
    try:
        ds = HeadDataset(args.dataset, check="arrays")  # its codes are used: they must be there and finite
    except DgnerfError as e:
        raise DgnerfError(f"--dataset {args.dataset!r}: {e}") from None
    if ds.identity_dim != model.cfg.identity_dim or ds.expression_dim != model.cfg.expression_dim:
        raise DgnerfError(f"--dataset {args.dataset}: codes are {ds.identity_dim}-d / {ds.expression_dim}-d, the checkpoint "
                          f"expects {model.cfg.identity_dim}-d / {model.cfg.expression_dim}-d")
    for flag, person in (("--person-a", args.person_a), ("--person-b", args.person_b)):
        if person not in ds.persons:
            have = ds.persons
            raise DgnerfError(f"{flag} {person!r}: not a person of {args.dataset} (it has {have[:12]}"
                              f"{'...' if len(have) > 12 else ''})")
    try:
        img = interpolation_figure(model, ds, args.person_a, args.person_b, steps=args.steps, yaws=yaws)
    except (DgnerfError, ValueError) as e:  # HeadModel refuses its inputs with a ValueError
        if not str(e).startswith("HeadModel:"):
            raise
        # the model's inputs here are the dataset's codes and cameras: a value the model refuses is the dataset's
        raise DgnerfError(f"--dataset {args.dataset!r}: its codes or cameras do not render ({e})") from None
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
    p.add_argument("--steps", type=int, default=7, help=f"columns per grid, 2..{MAX_STEPS} (default 7)")
    p.add_argument("--yaws", default="-25,0,25", help="views, comma-separated yaw degrees (default -25,0,25)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)
