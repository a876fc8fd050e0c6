"""`dgnerf preprocess VIDEO_OR_IMAGES... --out DATASET`: real videos, image folders or photos -> a training set
(docs/preprocess.md);
`dgnerf preprocess import ...`: a user's own tracking results (3DMM coefficients + poses) -> a dataset."""
import os
import sys

from dgnerf.commands._common import check_int, check_number, removed_on_error, topmost_missing
from dgnerf.errors import DgnerfError
from dgnerf.preprocess.importer import import_tracking
from dgnerf.preprocess.pipeline import Options, run
from dgnerf.preprocess.sources import parse_face


def register(sub):
    p = sub.add_parser(
        "preprocess",
        help="videos / image folders -> dataset (tracking, pose, crop, mask, codes); 'preprocess import' for own tracking",
        description="Turn videos or image folders (one person each) into a dgnerf dataset. "
        "`dgnerf preprocess import --help` imports your own tracker's results instead.",
    )
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_IMAGES",
                   help="videos, folders of photos, or single photos (.jpg, .png, .ppm, .tif, .webp, ...): one person each, "
                        "named after the file or folder")
    p.add_argument("--out", required=True, metavar="DATASET", help="output dataset directory")
    p.add_argument("--resolution", type=int, default=256, help="square crop size in pixels (default 256)")
    p.add_argument("--preview", action="store_true", help="write DATASET/preview.png: landmarks, pose axes and masks")
    p.add_argument("--identity", choices=["facenet", "adaface"], default="facenet", help="identity encoder (default facenet)")
    p.add_argument("--adaface", metavar="CKPT.safetensors", help="AdaFace IR weights (safetensors) for --identity adaface")
    p.add_argument("--expression-basis", metavar="DATASET_OR_FILE", help="project into this existing basis instead of building one")
    p.add_argument("--expression-dim", type=int, default=46, help="components of a new basis (default 46)")
    p.add_argument("--fov", type=float, default=50.0, help="assumed field of view across the longer image side, degrees (default 50)")
    p.add_argument("--smooth", type=float, default=1.0,
                   help="temporal pose smoothing of videos, sigma in frames (0 = off; default 1; photos are never smoothed)")
    p.add_argument("--face", default="auto", metavar="auto|largest|N",
                   help="which face is the person when a picture shows several: auto (default: the largest once it is "
                        "clearly the largest), largest, or N = the N-th face from the left (0 = leftmost)")
    p.add_argument("--split", default="train", help="split of these persons (train, val, test; default train)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames per input")
    p.add_argument("--stride", type=int, default=1, help="use every STRIDE-th frame")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("import of your own tracking (dgnerf preprocess import --tracking TRACK.json --out DATASET)")
    g.add_argument("--tracking", metavar="TRACK.json|.npz", help="per-frame images, poses, intrinsics, expression coefficients (docs/preprocess.md)")
    g.add_argument("--head-radius", type=float, default=1.3, help="head_radius of the imported set, in its translation units")
    g.add_argument("--full-masks", action="store_true", help="frames without a mask get an all-255 mask")
    p.set_defaults(func=_run)


def _run(args):
    if args.inputs and args.inputs[0] == "import":
        if len(args.inputs) > 1:
            raise DgnerfError(f"preprocess import: unexpected arguments {args.inputs[1:]}; give the file with --tracking")
        if not args.tracking:
            raise DgnerfError("preprocess import: --tracking TRACK.json (or .npz) is required")
        check_int(args.resolution, "--resolution", 16, 4096, "crop size in pixels")
        check_number(args.head_radius, "--head-radius", 0, 1e6, lo_open=True, what="radius")

        with removed_on_error(topmost_missing(args.out)):
            res = import_tracking(args.tracking, args.out, args.resolution, args.head_radius, args.full_masks,
                                  args.overwrite)
        return 0 if res["kept"] else 1
    if args.tracking:
        raise DgnerfError("--tracking belongs to `dgnerf preprocess import`")

    if args.stride < 1:
        raise DgnerfError(f"--stride: expected >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 1:
        raise DgnerfError(f"--max-frames: expected >= 1, got {args.max_frames}")
    if not (1 <= args.expression_dim <= 1404):
        raise DgnerfError(f"--expression-dim: expected 1..1404, got {args.expression_dim}")
    if args.expression_basis is not None and not args.expression_basis.strip():
        raise DgnerfError("--expression-basis: empty path (a dataset directory or an expression_basis.safetensors)")
    if args.adaface is not None and args.identity != "adaface":
        raise DgnerfError(f"--adaface {args.adaface}: only used with --identity adaface")
    if args.identity == "adaface":
        if not args.adaface:
            raise DgnerfError("--identity adaface needs --adaface CHECKPOINT.safetensors (AdaFace IR weights)")
        if not os.path.isfile(args.adaface):
            raise DgnerfError(f"--adaface {args.adaface!r}: no such file (AdaFace IR weights, .safetensors)")
    if not args.split or not args.split.isprintable() or "/" in args.split:
        raise DgnerfError(f"--split: expected a split name like train, val or test, got {args.split!r}")
    opts = Options(
        resolution=args.resolution,
        fov_deg=args.fov,
        smooth_sigma=args.smooth,
        expression_dim=args.expression_dim,
        split=args.split,
        max_frames=args.max_frames,
        stride=args.stride,
        identity=args.identity,
        adaface=args.adaface,
        expression_basis=args.expression_basis,
        face=parse_face(args.face),
        preview=args.preview,
        overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    # a run that fails (nothing usable, Ctrl-C, a full disk) leaves no half-written dataset it created
    with removed_on_error(topmost_missing(args.out)):
        summary = run(args.inputs, args.out, opts)
    print(summary.format())
    return 0

