"""`dgnerf render` (one image of a head) and `dgnerf init-checkpoint` (a randomly initialised model).

Codes are read from .npy (np.load with allow_pickle=False), .txt (whitespace/comma separated numbers)
or .safetensors (its single tensor, or the one named like the code) files; `zeros` and `random[:SEED]`
are accepted in place of a file.
"""
from __future__ import annotations

import os

from dgnerf.errors import DgnerfError

FLAG_HELP = {
    "precision": "arithmetic of the MLP and renderer: fp32 (exact), bf16 (CPU/GPU), fp16 (GPU)",
}


def load_code(spec: str, dim: int, name: str):
    """A code of length `dim` from a file or `zeros` / `random[:SEED]` -> float32 tensor [1, dim]."""
    import numpy as np
    import torch

    if spec == "zeros":
        return torch.zeros(1, dim)
    if spec == "random" or spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        except ValueError:
            raise DgnerfError(f"--{name}: expected random or random:SEED with an integer SEED, got {spec!r}") from None
        g = torch.Generator().manual_seed(seed)
        return torch.randn(1, dim, generator=g)
    if not os.path.isfile(spec):
        raise DgnerfError(f"--{name}: code file {spec!r} does not exist (expected a .npy, .txt or .safetensors file, or 'zeros')")
    ext = os.path.splitext(spec)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(spec, allow_pickle=False)
        elif ext == ".txt":
            with open(spec) as f:
                text = f.read().replace(",", " ")
            arr = np.array([float(t) for t in text.split()], dtype=np.float64)
        elif ext == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(spec)
            if len(tensors) == 1:
                arr = next(iter(tensors.values()))
            else:
                keys = [k for k in (name, "code", "z_id" if name == "identity" else "beta") if k in tensors]
                if not keys:
                    raise DgnerfError(f"--{name}: {spec!r} holds tensors {sorted(tensors)}; expected one tensor or one named "
                                      f"{name!r} or 'code'")
                arr = tensors[keys[0]]
        else:
            raise DgnerfError(f"--{name}: unsupported code file type {ext!r} ({spec!r}); use .npy, .txt or .safetensors")
    except DgnerfError:
        raise
    except Exception as e:
        raise DgnerfError(f"--{name}: could not read {spec!r}: {e}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        raise DgnerfError(f"--{name}: {spec!r} holds {arr.dtype} values, expected numbers")
    arr = arr.astype(np.float32).reshape(-1)
    if arr.size != dim:
        raise DgnerfError(f"--{name}: {spec!r} holds {arr.size} numbers, expected {dim}")
    if not np.isfinite(arr).all():
        raise DgnerfError(f"--{name}: {spec!r} contains {int((~np.isfinite(arr)).sum())} NaN/Inf values")
    return torch.from_numpy(arr.copy())[None]


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
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help=FLAG_HELP["precision"])
    g.add_argument("--ert", type=float, default=0.0, metavar="T",
                   help="early ray termination below transmittance T (approximate; 0 = off)")
    g.add_argument("--skip-stride", type=int, default=0, metavar="K",
                   help="empty-space skipping with a density pass at every K-th sample (approximate; 0 = off)")


def build_model(args):
    import torch

    from dgnerf.checkpoint import load_checkpoint
    from dgnerf.model import HeadModel

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise DgnerfError("--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, device=dev)
    elif args.random_init:
        torch.manual_seed(args.seed)
        model = HeadModel()
        if not args.no_head_prior:
            from dgnerf.model.prior import apply_head_prior

            apply_head_prior(model)
        model = model.to(dev).eval()
    else:
        raise DgnerfError("no model: pass --checkpoint C (make one with `dgnerf init-checkpoint C`) or --random-init")
    return model, torch.device(dev)


def codes(args, model):
    if args.identity is None:
        raise DgnerfError("--identity is required: a code file (.npy/.txt/.safetensors) or random[:SEED]")
    z = load_code(args.identity, model.cfg.z_id_dim, "identity")
    beta = load_code(args.expression, model.cfg.beta_dim, "expression")
    return z, beta


def render_frames(model, device, z, beta, yaws, pitches, rolls, args, progress=False, aux=None):
    """Render one frame per camera -> list of HxWx3 uint8 arrays (aux: a list that receives the outputs' opacity maps)."""
    import torch

    from dgnerf.apps.interp import view_c2w

    dist = model.cfg.camera_distance if args.distance is None else args.distance
    z, beta = z.to(device), beta.to(device)
    flags = {}
    if args.path == "fast":
        flags = dict(precision=args.precision, ert_threshold=args.ert, skip_stride=args.skip_stride)
    elif args.precision != "fp32" or args.ert or args.skip_stride:
        raise DgnerfError("--path reference is exact fp32: drop --precision/--ert/--skip-stride or use --path fast")
    frames = []
    items = list(zip(yaws, pitches, rolls))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="rendering", unit="frame")
    # In the training data's world frame when the checkpoint records it (the trainer does): yaw 0 is then the
    # data's frontal view for every convention (a preprocessed video's world is upside down and behind
    # relative to the built-in set's).
    with torch.no_grad():
        for yaw, pitch, roll in items:
            c2w = view_c2w(yaw, pitch, dist, model.world_frame, device=device, roll=roll)
            out = model(z, beta, c2w, path=args.path, **flags)
            img = out["image"][0]
            if aux is not None:
                aux.append(out["opacity"][0].cpu())
            frames.append((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return frames


def _check_out(path: str, exts):
    if os.path.splitext(path)[1].lower() not in exts:
        raise DgnerfError(f"--out: expected a file ending in {' or '.join(exts)}, got {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DgnerfError(f"--out: the directory {parent!r} does not exist")


def run_render(args):
    from PIL import Image

    _check_out(args.out, (".png", ".jpg", ".jpeg"))
    model, device = build_model(args)
    z, beta = codes(args, model)
    if args.opacity_out:
        _check_out(args.opacity_out, (".png",))
    aux = []
    frame = render_frames(model, device, z, beta, [args.yaw], [args.pitch], [args.roll], args, aux=aux)[0]
    Image.fromarray(frame).save(args.out)
    print(f"wrote {args.out} ({frame.shape[1]}x{frame.shape[0]})")
    if args.opacity_out:
        op = (aux[0].clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8).numpy()
        Image.fromarray(op).resize((frame.shape[1], frame.shape[0]), Image.NEAREST).save(args.opacity_out)
        print(f"wrote {args.opacity_out} (opacity of the feature map, upscaled)")
    return 0


def run_init(args):
    from dgnerf.checkpoint import init_checkpoint

    path = init_checkpoint(args.out, seed=args.seed, head_prior=not args.no_head_prior)
    print(f"wrote {path} (randomly initialised, untrained head model)")
    return 0


def register(sub):
    p = sub.add_parser("render", help="render one image of a head from identity/expression codes and a head pose",
                       description="Render a 256x256 image of the head given by an identity and an expression code, "
                                   "seen from a camera orbiting the head (yaw/pitch/roll in degrees).")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output image (.png)")
    p.add_argument("--opacity-out", metavar="PNG", help="also write the feature map's opacity (the head's silhouette)")
    p.set_defaults(func=run_render)

    q = sub.add_parser("init-checkpoint", help="write a randomly initialised head checkpoint (default config)",
                       description="Write a randomly initialised (untrained) head model checkpoint, so the "
                                   "commands work before any training.")
    q.add_argument("out", help="output .safetensors file (or an existing directory)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-head-prior", action="store_true", help="plain random weights (density is fog)")
    q.set_defaults(func=run_init)
