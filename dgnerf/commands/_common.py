"""What the commands share: model loading, devices, codes, render options named by their flags, output checks.

Library code (dgnerf.apps, dgnerf.model) raises errors in its own terms; the functions here check the flags
first and name them as the user typed them.
"""
from __future__ import annotations

import math
import os

import torch
from tqdm import tqdm

from dgnerf import codes as code_files
from dgnerf.camera import view_c2w
from dgnerf.errors import DgnerfError
from dgnerf.losses import load_vgg16
from dgnerf.model import HeadModel, RenderOptions
from dgnerf.model.checkpoint import load_checkpoint
from dgnerf.model.prior import apply_head_prior

PRECISION_HELP = "arithmetic of the MLP and renderer: fp32 (exact), bf16 (CPU/GPU), fp16 (GPU)"


def resolve_device(device: str | None, flag: str = "--device") -> torch.device:
    """The torch device of a --device flag (None: cuda when available, else cpu)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DgnerfError(f"{flag}: expected cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DgnerfError(f"{flag}: expected cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DgnerfError(f"{flag} {device}: no CUDA GPU is available (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DgnerfError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def load_model(checkpoint: str, device: str | None, flag: str = "--checkpoint"):
    """The head model of a checkpoint; its problems (missing, not a checkpoint, corrupted) name `flag`."""
    dev = resolve_device(device)
    if not checkpoint:
        raise DgnerfError(f"{flag}: required (a head checkpoint, e.g. RUN/checkpoints/step_XXXXXXXX)")
    try:
        return load_checkpoint(checkpoint, device=dev)
    except DgnerfError as e:
        raise DgnerfError(f"{flag}: {e}") from None


def add_model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", metavar="C", help="head checkpoint (.safetensors or a directory with model.safetensors)")
    g.add_argument("--random-init", action="store_true",
                   help="use a randomly initialised model (untrained) when no checkpoint is given")
    g.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    g.add_argument("--no-head-prior", action="store_true",
                   help="--random-init without the ellipsoid density prior (renders as fog)")
    g.add_argument("--identity", metavar="CODE", default=None,
                   help="identity code file (.npy/.txt/.safetensors, 512 numbers), or random[:SEED]")
    g.add_argument("--expression", metavar="CODE", default="zeros",
                   help="expression code file (46 numbers) or 'zeros' (default)")
    g = p.add_argument_group("camera (degrees; see dgnerf.camera for the conventions)")
    g.add_argument("--yaw", type=float, default=0.0)
    g.add_argument("--pitch", type=float, default=0.0)
    g.add_argument("--roll", type=float, default=0.0)
    g.add_argument("--distance", type=float, default=None, help="camera distance (default: the config's)")
    g = p.add_argument_group("engine")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--path", choices=("fast", "reference"), default="fast", help="fast (default) or the reference path")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help=PRECISION_HELP)
    g.add_argument("--ert", type=float, default=0.0, metavar="T",
                   help="early ray termination below transmittance T (approximate; 0 = off)")
    g.add_argument("--skip-stride", type=int, default=0, metavar="K",
                   help="empty-space skipping with a density pass at every K-th sample (approximate; 0 = off)")


def build_model(args):
    dev = resolve_device(args.device)
    if args.checkpoint:
        model = load_model(args.checkpoint, str(dev))
    elif args.random_init:
        torch.manual_seed(args.seed)
        model = HeadModel()
        if not args.no_head_prior:
            apply_head_prior(model)
        model = model.to(dev).eval()
    else:
        raise DgnerfError("no model: pass --checkpoint C (make one with `dgnerf init-checkpoint C`) or --random-init")
    return model, dev


def codes(args, model: HeadModel):
    if args.identity is None:
        raise DgnerfError("--identity is required: a code file (.npy/.txt/.safetensors) or random[:SEED]")
    z = code_files.load_code(args.identity, model.cfg.identity_dim, "identity")
    beta = code_files.load_code(args.expression, model.cfg.expression_dim, "expression")
    return z, beta


def render_options(args) -> RenderOptions:
    """RenderOptions from the engine flags, each problem named by its flag."""
    if args.path == "reference" and (args.precision != "fp32" or args.ert or args.skip_stride):
        raise DgnerfError("--path reference is exact fp32: drop --precision/--ert/--skip-stride or use --path fast")
    if not (math.isfinite(args.ert) and 0.0 <= args.ert < 1.0):
        raise DgnerfError(f"--ert: expected a transmittance in [0, 1) (0 = off), got {args.ert!r}")
    if args.skip_stride < 0:
        raise DgnerfError(f"--skip-stride: expected an int >= 0 (0 = off), got {args.skip_stride}")
    return RenderOptions(path=args.path, precision=args.precision, ert_threshold=args.ert, skip_stride=args.skip_stride)


def check_camera_flags(args) -> None:
    for flag in ("yaw", "pitch", "roll"):
        v = getattr(args, flag)
        if not math.isfinite(v):
            raise DgnerfError(f"--{flag}: expected a finite angle in degrees, got {v!r}")
    if args.distance is not None and not (math.isfinite(args.distance) and args.distance > 0):
        raise DgnerfError(f"--distance: expected a finite camera distance > 0, got {args.distance!r}")


def render_frames(model, device, z, beta, yaws, pitches, rolls, args, progress=False, aux=None):
    """Render one frame per camera -> list of HxWx3 uint8 arrays (aux: a list that receives the outputs' opacity maps)."""
    dist = model.cfg.camera_distance if args.distance is None else args.distance
    z, beta = z.to(device), beta.to(device)
    options = render_options(args)
    frames = []
    items = list(zip(yaws, pitches, rolls))
    if progress:
        items = tqdm(items, desc="rendering", unit="frame")
    # In the training data's world frame when the checkpoint records it (the trainer does): yaw 0 is then the
    # data's frontal view for every convention (a preprocessed video's world is upside down and behind
    # relative to the built-in set's).
    with torch.no_grad():
        for yaw, pitch, roll in items:
            c2w = view_c2w(yaw, pitch, dist, model.cfg.world_rotation, device=device, roll=roll)
            out = model(z, beta, c2w, options=options)
            img = out.image[0]
            if aux is not None:
                aux.append(out.opacity[0].cpu())
            frames.append((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return frames


def check_out(path: str, exts):
    if os.path.splitext(path)[1].lower() not in exts:
        raise DgnerfError(f"--out: expected a file ending in {' or '.join(exts)}, got {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DgnerfError(f"--out: the directory {parent!r} does not exist")


def vggs(args, need_perceptual: bool, log=print):
    """(VGG for the perceptual loss or None, VGG for LPIPS or None)."""
    vgg = None
    if need_perceptual:
        vgg = load_vgg16()  # raises DgnerfError saying how to fetch it
    if args.no_lpips:
        return vgg, None
    if vgg is None:
        try:
            vgg = load_vgg16()
        except DgnerfError as e:
            log(f"dgnerf: LPIPS skipped ({e})")
            return None, None
    return (vgg if need_perceptual else None), vgg


def csim_info(embedder, reason) -> dict:
    """What the reports say about CSIM: computed with which encoder, or why not."""
    if embedder is not None:
        return {"available": True, "embedder": getattr(embedder, "name", type(embedder).__name__)}
    return {"available": False, "reason": reason}


__all__ = ["resolve_device", "load_model", "add_model_args", "build_model", "codes", "render_options",
           "check_camera_flags", "render_frames", "check_out", "vggs", "csim_info", "PRECISION_HELP"]
