"""`dgnerf drive --target (CODE_FILE | DATASET:person | IMAGES_DIR | VIDEO) --driver (VIDEO | DATASET[:person]) --checkpoint C --out drive.mp4`:
the target's identity with the driver's head pose and expression, as a side-by-side video (driver | result)."""
from __future__ import annotations

import os

from dgnerf.apps.drive import drive_frames, driver_from_dataset, parse_source, target_identity
from dgnerf.apps.fit import is_dataset, preprocess_inputs
from dgnerf.commands._common import check_int, check_number, load_model, resolve_device
from dgnerf.commands._common import check_out as _check_out
from dgnerf.errors import DgnerfError
from dgnerf.media import write_video

MAX_SCALE = 16  # 2 x 256 px x 16 is already a 8192 px wide video
MAX_SIDE = 8192  # what video encoders and players take


def run(args):
    # every flag before any work: a bad one must not cost a model load or start the progress bar
    _check_out(args.out, (".mp4", ".gif"))
    check_number(args.fps, "--fps", 0, 1000, lo_open=True, what="frame rate")
    check_int(args.max_frames, "--max-frames", 1)
    check_int(args.scale, "--scale", 0, MAX_SCALE, "upscaling factor, 0 = to about 256 px")
    check_int(args.batch, "--batch", 1, 4096, "frames rendered at once")
    resolve_device(args.device)
    model = load_model(args.checkpoint, args.device)
    scale = args.scale if args.scale else max(1, 256 // model.cfg.image_size)
    if 2 * model.cfg.image_size * scale > MAX_SIDE:
        raise DgnerfError(f"--scale {args.scale}: the video would be {2 * model.cfg.image_size * scale} px wide "
                          f"(the checkpoint renders {model.cfg.image_size} px); at most {MAX_SIDE}")
    z, what = target_identity(args.target, model.cfg)
    root, person = parse_source(args.driver, "--driver")
    if not os.path.exists(root):
        raise DgnerfError(f"--driver {args.driver!r}: no such file or directory (expected VIDEO or DATASET[:person])")
    if is_dataset(root):
        drv = driver_from_dataset(root, model.cfg, person=person, max_frames=args.max_frames)
    else:
        if person is not None:
            raise DgnerfError(f"--driver {args.driver!r}: {root!r} is not a dataset (no manifest.json), ':{person}' "
                              "selects a person of a dataset")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dgnerf-drive-") as td:
            pre = preprocess_inputs([root], os.path.join(td, "driver"), args.expression_basis,
                                    resolution=max(64, model.cfg.image_size), split="test", max_frames=args.max_frames,
                                    what="--driver")
            drv = driver_from_dataset(pre, model.cfg, max_frames=args.max_frames)
    try:
        frames = drive_frames(model, z, drv, batch=args.batch, progress=not args.no_progress, scale=scale)
    except (DgnerfError, ValueError) as e:  # HeadModel refuses its inputs with a ValueError
        if not str(e).startswith("HeadModel:"):
            raise
        # the model's inputs are the target's identity and the driver's codes and cameras
        raise DgnerfError(f"--target {args.target!r} / --driver {args.driver!r}: their codes or cameras do not render "
                          f"({e})") from None
    path = write_video(frames, args.out, args.fps)
    print(f"wrote {path} ({len(frames)} frames: driver {drv.person} | identity of {what})")
    return 0


def register(sub):
    p = sub.add_parser("drive", help="drive a head with another person's video: side-by-side video (driver | result)",
                       description="Identity from --target, head pose and expression from --driver, frame by frame.")
    p.add_argument("--target", required=True, metavar="CODE_FILE|DATASET:person|IMAGES_DIR|PHOTO|VIDEO",
                   help="identity: a code file (e.g. `dgnerf fit`'s identity_<person>.safetensors), a dataset person, or "
                        "photos / a photo / a video of the target (encoder only, needs the preprocess extra)")
    p.add_argument("--driver", required=True, metavar="VIDEO|DATASET[:person]",
                   help="a preprocessed dataset (one person, or DATASET:person) whose expression codes are in the "
                        "model's basis; a raw video needs the preprocess extra and --expression-basis")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--out", required=True, help="output video (.mp4, or .gif)")
    p.add_argument("--expression-basis", metavar="DATASET_OR_FILE",
                   help="for a raw driver video: the training set (or its expression_basis.safetensors)")
    p.add_argument("--fps", type=float, default=15.0, help="frames per second of the video (default 15)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many driver frames")
    p.add_argument("--scale", type=int, default=0,
                   help=f"integer upscaling of the video, 1..{MAX_SCALE} (default 0: to about 256 px)")
    p.add_argument("--batch", type=int, default=8, help="frames rendered at once (default 8)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
