"""`dgnerf render`: one image of a head from identity and expression codes (code files: dgnerf.codes)."""
from __future__ import annotations

import os

import torch
from PIL import Image

from dgnerf.commands._common import (
    add_model_args,
    build_model,
    check_camera_flags,
    check_out,
    codes,
    render_frames,
    render_options,
)
from dgnerf.errors import DgnerfError
from dgnerf.fileio import atomic_output


def run(args):
    # every flag before the model is loaded
    check_out(args.out, (".png", ".jpg", ".jpeg"), flag="--out")
    if args.opacity_out:
        check_out(args.opacity_out, (".png",), flag="--opacity-out")
        if os.path.abspath(args.opacity_out) == os.path.abspath(args.out):
            raise DgnerfError(f"--opacity-out {args.opacity_out!r}: the same file as --out")
    check_camera_flags(args)
    render_options(args)
    model, device = build_model(args)
    z, beta = codes(args, model)
    aux = []
    frame = render_frames(model, device, z, beta, [args.yaw], [args.pitch], [args.roll], args, aux=aux)[0]
    with atomic_output(args.out) as tmp:
        Image.fromarray(frame).save(tmp, format="JPEG" if args.out.lower().endswith((".jpg", ".jpeg")) else "PNG")
    print(f"wrote {args.out} ({frame.shape[1]}x{frame.shape[0]})")
    if args.opacity_out:
        op = (aux[0].clamp(0, 1) * 255).round().to(dtype=torch.uint8).numpy()
        with atomic_output(args.opacity_out) as tmp:
            Image.fromarray(op).resize((frame.shape[1], frame.shape[0]), Image.NEAREST).save(tmp, format="PNG")
        print(f"wrote {args.opacity_out} (opacity of the feature map, upscaled)")
    return 0


def register(sub):
    p = sub.add_parser("render", help="render one image of a head from identity/expression codes and a head pose",
                       description="Render one image of the head given by an identity and an expression code, at the "
                                   "checkpoint's image size (image_size of its config: 256x256 for the paper's model), "
                                   "seen from a camera orbiting the head (yaw/pitch/roll in degrees).")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output image (.png, or .jpg)")
    p.add_argument("--opacity-out", metavar="PNG", help="also write the feature map's opacity (the head's silhouette)")
    p.set_defaults(func=run)
