"""`dgnerf render`: one image of a head from identity and expression codes (code files: dgnerf.codes)."""
from __future__ import annotations

import torch
from PIL import Image

from dgnerf.commands._common import add_model_args, build_model, check_camera_flags, check_out, codes, render_frames


def run(args):
    check_out(args.out, (".png", ".jpg", ".jpeg"))
    check_camera_flags(args)
    model, device = build_model(args)
    z, beta = codes(args, model)
    if args.opacity_out:
        check_out(args.opacity_out, (".png",))
    aux = []
    frame = render_frames(model, device, z, beta, [args.yaw], [args.pitch], [args.roll], args, aux=aux)[0]
    Image.fromarray(frame).save(args.out)
    print(f"wrote {args.out} ({frame.shape[1]}x{frame.shape[0]})")
    if args.opacity_out:
        op = (aux[0].clamp(0, 1) * 255).round().to(dtype=torch.uint8).numpy()
        Image.fromarray(op).resize((frame.shape[1], frame.shape[0]), Image.NEAREST).save(args.opacity_out)
        print(f"wrote {args.opacity_out} (opacity of the feature map, upscaled)")
    return 0


def register(sub):
    p = sub.add_parser("render", help="render one image of a head from identity/expression codes and a head pose",
                       description="Render a 256x256 image of the head given by an identity and an expression code, "
                                   "seen from a camera orbiting the head (yaw/pitch/roll in degrees).")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output image (.png)")
    p.add_argument("--opacity-out", metavar="PNG", help="also write the feature map's opacity (the head's silhouette)")
    p.set_defaults(func=run)
