"""`dgnerf gaze --checkpoint C --dataset D --person P --out gaze.png`: gaze editing (dgnerf.apps.gaze) for a model
trained with gaze conditioning: one PNG grid, columns = horizontal gaze (image left -> right), rows = vertical
(top = up), each from -spread to +spread standard deviations of the training set's gaze."""
from __future__ import annotations

from dgnerf.apps.gaze import gaze_figure
from dgnerf.commands._common import check_dataset_dir, check_int, check_number, load_model, resolve_device
from dgnerf.commands._common import check_out as _check_out
from dgnerf.data import HeadDataset
from dgnerf.errors import DgnerfError
from dgnerf.media import save_png


def _dims(text, flag):
    if text is None:
        return None
    try:
        dims = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DgnerfError(f"{flag}: expected comma-separated component indices like 0,2, got {text!r}") from None
    if not dims:
        raise DgnerfError(f"{flag}: expected at least one component index like 0,2, got {text!r}")
    if any(not 0 <= d < 1024 for d in dims):
        raise DgnerfError(f"{flag}: expected component indices >= 0, got {text!r}")
    return dims


def run(args):
    # every flag before the model is loaded
    _check_out(args.out, (".png",))
    check_int(args.steps, "--steps", 2, 32, "gaze values per axis")
    check_number(args.spread, "--spread", 0, 100, lo_open=True, what="number of standard deviations")
    check_number(args.yaw, "--yaw", -360, 360, what="angle in degrees")
    x, y = _dims(args.x_dims, "--x-dims"), _dims(args.y_dims, "--y-dims")
    if (x is None) != (y is None):
        raise DgnerfError("--x-dims/--y-dims: give both (horizontal and vertical components) or neither")
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
    if args.person not in ds.persons:
        raise DgnerfError(f"--person {args.person!r}: not a person of {args.dataset} (it has {ds.persons[:12]}"
                          f"{'...' if len(ds.persons) > 12 else ''})")
    try:
        img, values = gaze_figure(model, ds, args.person, steps=args.steps, spread=args.spread, yaw=args.yaw, x=x, y=y)
    except (DgnerfError, ValueError) as e:  # HeadModel refuses its inputs with a ValueError
        if not str(e).startswith("HeadModel:"):
            raise
        # the model's inputs here are the dataset's codes and cameras: a value the model refuses is the dataset's
        raise DgnerfError(f"--dataset {args.dataset!r}: its codes or cameras do not render ({e})") from None
    save_png(args.out, img)
    fmt = lambda v: "[" + ", ".join(f"{x:.3g}" for x in v.tolist()) + "]"  # noqa: E731
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]}: {args.person}; gaze top left {fmt(values[0, 0])}, top right "
          f"{fmt(values[0, -1])}, bottom left {fmt(values[-1, 0])}: columns = horizontal gaze (image left -> right), "
          f"rows = vertical (top = up), +-{args.spread:g} std of the training gaze)")
    return 0


def register(sub):
    p = sub.add_parser("gaze", help="gaze editing grid (PNG) of a model trained with gaze conditioning",
                       description="Render one person with the gaze code moved over a grid: columns = horizontal "
                                   "gaze (image left -> right), rows = vertical (top = up), each over +-spread "
                                   "standard deviations of the training set's gaze; the other components at the mean.")
    p.add_argument("--checkpoint", required=True, metavar="C", help="a model trained with gaze_dim > 0")
    p.add_argument("--dataset", required=True, metavar="D", help="dataset whose person's identity code is used")
    p.add_argument("--person", required=True, metavar="P")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--steps", type=int, default=5, help="gaze values per axis, 2..32 (default 5)")
    p.add_argument("--spread", type=float, default=2.0, help="standard deviations either side of the mean (default 2)")
    p.add_argument("--yaw", type=float, default=0.0, help="head yaw of the view, degrees (default 0: frontal)")
    p.add_argument("--x-dims", default=None, help="horizontal gaze components, e.g. 0,2 (default: from the gaze names)")
    p.add_argument("--y-dims", default=None, help="vertical gaze components, e.g. 1,3 (default: from the gaze names)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)
