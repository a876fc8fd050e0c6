"""`dgnerf drive --target (CODE_FILE | DATASET:person | IMAGES_DIR | VIDEO) --driver (VIDEO | DATASET[:person]) --checkpoint C --out drive.mp4`:
the target's identity with the driver's head pose and expression, as a side-by-side video (driver | result)."""
from __future__ import annotations

import os

from dgnerf.apps.drive import drive_frames, driver_from_dataset, target_identity
from dgnerf.apps.fit import is_dataset, parse_source, preprocess_inputs
from dgnerf.commands._common import check_out as _check_out
from dgnerf.commands._common import load_model
from dgnerf.errors import DgnerfError
from dgnerf.media import write_video


def run(args):
    _check_out(args.out, (".mp4", ".gif"))
    if not args.fps > 0:
        raise DgnerfError(f"--fps: expected a positive number, got {args.fps}")
    if args.max_frames is not None and args.max_frames < 1:
        raise DgnerfError(f"--max-frames: expected >= 1, got {args.max_frames}")
    model = load_model(args.checkpoint, args.device)
    z, what = target_identity(args.target, model.cfg)
    root, person = parse_source(args.driver)
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
    scale = args.scale if args.scale else max(1, 256 // model.cfg.image_size)
    frames = drive_frames(model, z, drv, batch=args.batch, progress=not args.no_progress, scale=scale)
    path = write_video(frames, args.out, args.fps)
    print(f"wrote {path} ({len(frames)} frames: driver {drv.person} | identity of {what})")
    return 0


def register(sub):
    p = sub.add_parser("drive", help="drive a head with another person's video: side-by-side video (driver | result)",
                       description="Identity from --target, head pose and expression from --driver, frame by frame.")
    p.add_argument("--target", required=True, metavar="CODE_FILE|DATASET:person|IMAGES_DIR|VIDEO",
                   help="identity: a code file (e.g. `dgnerf fit`'s identity_<person>.safetensors), a dataset person, or "
                        "photos / a video of the target (encoder only, needs the preprocess extra)")
    p.add_argument("--driver", required=True, metavar="VIDEO|DATASET[:person]",
                   help="a preprocessed dataset (one person, or DATASET:person) whose expression codes are in the "
                        "model's basis; a raw video needs the preprocess extra and --expression-basis")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--out", required=True, help="output video (.mp4, or .gif)")
    p.add_argument("--expression-basis", metavar="DATASET_OR_FILE",
                   help="for a raw driver video: the training set (or its expression_basis.safetensors)")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--scale", type=int, default=0, help="integer upscaling of the video (default: to about 256 px)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
