"""What the commands share: model loading, devices, codes, render options named by their flags, output checks.

Library code (dgnerf.apps, dgnerf.model) raises errors in its own terms; the functions here check the flags
first and name them as the user typed them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil

import torch
from tqdm import tqdm

from dgnerf import codes as code_files
from dgnerf.apps.drive import identity_spec
from dgnerf.assets import VGG16_FILENAME, cache_dir, vgg16_path
from dgnerf.camera import view_c2w
from dgnerf.errors import DgnerfError
from dgnerf.losses import load_vgg16
from dgnerf.model import HeadConfig, HeadModel, RenderOptions
from dgnerf.model.checkpoint import load_checkpoint
from dgnerf.model.prior import apply_head_prior

PRECISION_HELP = "arithmetic of the MLP and renderer: fp32 (exact), bf16 (CPU/GPU), fp16 (GPU)"
IDENTITY_HELP = ("identity code (required): a code file (.npy/.txt/.safetensors, 512 numbers, e.g. `dgnerf fit`'s "
                 "identity_<person>.safetensors), DATASET:PERSON (the person's mean code), zeros, or random[:SEED]")
MAX_SKIP_STRIDE = 4096  # more than any model's samples per ray (a larger stride is one coarse sample per ray)
SEED_MAX = 2**63  # torch seeds are 64-bit; beyond that torch fails with an overflow that names nothing


def json_object(text: str):
    """argparse type of the JSON-object flags (--model, --lr-scale): argparse turns only ValueError/TypeError
    into its one-line error, so a deeply nested value (RecursionError) must become one of them here."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise argparse.ArgumentTypeError("JSON nested too deeply") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"name\": value}}', got {text[:80]!r}")
    return value


def flag_named(text: str, flags: dict) -> str:
    """An app's error message, which starts with the setting's field name ("iters: ..." or "a and b: ..."), with those
    names as the flags the user typed: flags maps a field to its flag; a field not in it is left as it is."""
    m = re.match(r"(\w+)( and (\w+))?:", text)
    if m and m.group(1) in flags:
        head = flags[m.group(1)] + (f" and {flags.get(m.group(3), m.group(3))}" if m.group(3) else "")
        text = head + text[m.end(0) - 1:]
    return text


def check_int(value, flag: str, lo: int | None = None, hi: int | None = None, what: str = "") -> None:
    """`flag` must be an int in [lo, hi] (either bound optional); `what` says what it counts."""
    if value is None:
        return
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = " and ".join(([f">= {lo}"] if lo is not None else []) + ([f"<= {hi}"] if hi is not None else []))
        raise DgnerfError(f"{flag}: expected an integer {rng}{f' ({what})' if what else ''}, got {value}")


def check_number(value, flag: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 what: str = "number", hi_open: bool = False) -> None:
    """`flag` must be a finite number >= lo (> lo with lo_open) and <= hi (< hi with hi_open)."""
    if value is None:
        return
    # an int is finite (and math.isfinite would overflow on a huge one)
    bad = (isinstance(value, float) and not math.isfinite(value)) or (lo is not None and (value <= lo if lo_open else value < lo)) or \
        (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi:g}")
        raise DgnerfError(f"{flag}: expected a finite {what}{' ' + ' and '.join(parts) if parts else ''}, got {value!r}")


def check_seed(value, flag: str = "--seed") -> None:
    check_int(value, flag, 0, SEED_MAX - 1, "a seed")


def resolve_device(device: str | None, flag: str = "--device") -> torch.device:
    """The torch device of a --device flag (None or "auto": cuda when available, else cpu)."""
    if device is None or device == "auto":
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


POINTER_MAX_BYTES = 4096  # RUN/checkpoints/latest holds one short name


def follow_checkpoint(path: str, flag: str = "--checkpoint") -> str:
    """The checkpoint a path means: a training run's pointer file RUN/checkpoints/latest (it names the newest
    step directory), a run directory RUN or its checkpoints/ directory (their `latest`), or the path itself."""
    seen = 0
    while seen < 4:
        seen += 1
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "model.safetensors")):
                return path
            for ptr in (os.path.join(path, "latest"), os.path.join(path, "checkpoints", "latest")):
                if os.path.isfile(ptr):
                    path = ptr
                    break
            else:
                return path
        if not os.path.isfile(path) or os.path.getsize(path) > POINTER_MAX_BYTES:
            return path
        with open(path, "rb") as f:
            raw = f.read()
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return path
        # a pointer is one relative name without separators: anything else is a (possibly broken) checkpoint
        if not name or "\n" in name or "/" in name or "\\" in name or name in (".", ".."):
            return path
        target = os.path.join(os.path.dirname(path), name)
        if not os.path.exists(target):
            if os.path.basename(path) != "latest":
                return path  # a short file that is no pointer: the loader says what it is
            raise DgnerfError(f"{flag}: {path}: the run's pointer names {name!r}, which is not there (deleted?); "
                              f"pass one of the step_* directories beside it")
        path = target
    return path


def load_model(checkpoint: str, device: str | None, flag: str = "--checkpoint"):
    """The head model of a checkpoint; its problems (missing, not a checkpoint, corrupted) name `flag`."""
    dev = resolve_device(device)
    if not checkpoint:
        raise DgnerfError(f"{flag}: required (a head checkpoint, e.g. RUN/checkpoints/step_XXXXXXXX)")
    path = follow_checkpoint(checkpoint, flag)
    try:
        return load_checkpoint(path, device=dev)
    except DgnerfError as e:
        raise DgnerfError(f"{flag}: {e}") from None
    except (OSError, MemoryError) as e:
        raise DgnerfError(f"{flag} {checkpoint!r}: could not be read ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - a file crafted past the loader's checks: still the file's fault
        raise DgnerfError(f"{flag} {checkpoint!r}: not a readable head checkpoint ({type(e).__name__}: "
                          f"{str(e)[:200]})") from None


def add_model_args(p):
    """The flags of the commands that render one head from codes (render, orbit)."""
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", metavar="C", help="head checkpoint (.safetensors or a directory with model.safetensors)")
    g.add_argument("--random-init", action="store_true",
                   help="use a randomly initialised model (untrained) when no checkpoint is given")
    g.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    g.add_argument("--no-head-prior", action="store_true",
                   help="--random-init without the ellipsoid density prior (renders as fog)")
    g.add_argument("--identity", metavar="CODE", required=True, help=IDENTITY_HELP)
    g.add_argument("--expression", metavar="CODE", default="zeros",
                   help="expression code file (.npy/.txt/.safetensors, 46 numbers), zeros (default) or random[:SEED]")
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
    check_seed(args.seed)
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
        raise DgnerfError("--identity is required: a code file (.npy/.txt/.safetensors), DATASET:PERSON, zeros or "
                          "random[:SEED]")
    z = identity_spec(args.identity, model.cfg, "--identity")
    beta = code_files.load_code(args.expression, model.cfg.expression_dim, "expression")
    return z, beta



def render_options(args) -> RenderOptions:
    """RenderOptions from the engine flags, each problem named by its flag."""
    if args.path == "reference" and (args.precision != "fp32" or args.ert or args.skip_stride):
        raise DgnerfError("--path reference is exact fp32: drop --precision/--ert/--skip-stride or use --path fast")
    if not (math.isfinite(args.ert) and 0.0 <= args.ert < 1.0):
        raise DgnerfError(f"--ert: expected a transmittance in [0, 1) (0 = off), got {args.ert!r}")
    if args.precision == "fp16" and resolve_device(getattr(args, "device", None)).type != "cuda":
        raise DgnerfError("--precision fp16: needs a CUDA GPU; use --precision bf16 on the CPU")
    if not 0 <= args.skip_stride <= MAX_SKIP_STRIDE:
        raise DgnerfError(f"--skip-stride: expected an int >= 0 (0 = off) and <= {MAX_SKIP_STRIDE}, got {args.skip_stride}")
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


def check_out(path: str, exts, flag: str = "--out"):
    """An output file flag: the right extension, an existing directory to write it in, not a directory itself."""
    if not path or os.path.splitext(path)[1].lower() not in exts:
        raise DgnerfError(f"{flag}: expected a file ending in {' or '.join(exts)}, got {path!r}")
    if os.path.isdir(path):
        raise DgnerfError(f"{flag} {path!r}: is a directory (expected a file ending in {' or '.join(exts)})")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DgnerfError(f"{flag} {path!r}: the directory {parent!r} does not exist")


def check_dataset_dir(path: str, flag: str = "--dataset") -> None:
    """A dataset flag names a directory holding manifest.json (the library's own error would not name the flag)."""
    if not os.path.exists(path):
        raise DgnerfError(f"{flag} {path!r}: no such directory")
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "manifest.json")):
        raise DgnerfError(f"{flag} {path!r}: not a dgnerf dataset (a directory holding manifest.json)")


@contextlib.contextmanager
def removed_on_error(path: str, keep=None):
    """For commands that create the output directory `path`: when the command fails (any exception, Ctrl-C
    included) and `path` did not exist before, it is removed, so a failed command leaves nothing behind.
    keep(path) -> True spares it (e.g. a training run that already wrote a checkpoint worth resuming)."""
    existed = os.path.lexists(path)
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(path) and not os.path.islink(path) and not (keep and keep(path)):
            shutil.rmtree(path, ignore_errors=True)
        raise


def topmost_missing(path: str) -> str:
    """The outermost directory of `path` that does not exist yet (what creating `path` would create), or path."""
    path = os.path.abspath(path)
    top = path
    parent = os.path.dirname(path)
    while parent != top and not os.path.lexists(parent):
        top, parent = parent, os.path.dirname(parent)
    return top


# Sizes past which a model cannot be built or trained here at all (checked before anything is allocated).
MAX_PARAMETERS = 2_000_000_000
MAX_IMAGE_SIZE = 4096
MAX_SAMPLES = 4096
# HeadConfig fields the trainer takes from the dataset: an override would build a model its codes do not fit.
DATA_FIELDS = {"identity_dim", "expression_dim", "z_id_dim", "beta_dim"}


def check_model_overrides(model: dict, where: str) -> None:
    """--model: known HeadConfig fields with valid values, and a model this machine could hold."""
    if not isinstance(model, dict):
        raise DgnerfError(f"{where}: expected a JSON object of HeadConfig fields, got {model!r}")
    fixed = sorted(set(model) & DATA_FIELDS)
    if fixed:
        raise DgnerfError(f"{where}: {fixed} come from the dataset (the length of its codes), not from --model")
    try:
        cfg = HeadConfig.from_dict(dict(model))
    except DgnerfError as e:
        raise DgnerfError(f"{where}: {str(e).replace('HeadConfig: ', '')}") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise DgnerfError(f"{where}: {e}") from None
    if cfg.image_size > MAX_IMAGE_SIZE or cfg.feature_size > cfg.image_size or cfg.n_samples > MAX_SAMPLES:
        raise DgnerfError(f"{where}: image_size {cfg.image_size} (at most {MAX_IMAGE_SIZE}), feature_size "
                          f"{cfg.feature_size} (at most image_size) and n_samples {cfg.n_samples} (at most "
                          f"{MAX_SAMPLES}) are out of range")
    try:
        with torch.device("meta"):  # counts the parameters without allocating them
            n = sum(p.numel() for p in HeadModel(cfg).parameters())
    except DgnerfError as e:
        raise DgnerfError(f"{where}: {e}") from None
    except (RuntimeError, ValueError, TypeError, OverflowError) as e:
        raise DgnerfError(f"{where}: not a model that can be built ({type(e).__name__}: {str(e)[:200]})") from None
    if n > MAX_PARAMETERS:
        raise DgnerfError(f"{where}: a model of {n:,} parameters, more than the {MAX_PARAMETERS:,} this trainer takes")


def vgg_missing(flag_text: str, weights_flag: bool = False) -> str | None:
    """None when the cached VGG16 weights are there, else the one line that says which flag needs them and how
    to get them (a fresh cache has none: they come from `dgnerf assets fetch --only vgg16`)."""
    try:
        vgg16_path()
        return None
    except DgnerfError:
        pass
    alt = ", pass --vgg-weights FILE.safetensors" if weights_flag else ""
    return (f"{flag_text} needs the VGG16 weights, which are not in the cache ({cached_vgg_path()}): run "
            f"`dgnerf assets fetch --only vgg16` once (online){alt}, or pass --lambda-perceptual 0 to go without the "
            "perceptual loss")


def cached_vgg_path() -> str:
    return str(cache_dir() / VGG16_FILENAME)


def vggs(args, need_perceptual: bool, log=print, perceptual_flag: str = "--lambda-perceptual"):
    """(VGG for the perceptual loss or None, VGG for LPIPS or None)."""
    vgg = None
    if need_perceptual:
        msg = vgg_missing(perceptual_flag)
        if msg:
            raise DgnerfError(msg)
        vgg = load_vgg16()
    if args.no_lpips:
        return vgg, None
    if vgg is None:
        if vgg_missing("LPIPS"):
            log("dgnerf: LPIPS skipped (it needs the VGG16 weights: `dgnerf assets fetch --only vgg16`; --no-lpips "
                "says you know)")
            return None, None
        vgg = load_vgg16()
    return (vgg if need_perceptual else None), vgg


def csim_info(embedder, reason) -> dict:
    """What the reports say about CSIM: computed with which encoder, or why not."""
    if embedder is not None:
        return {"available": True, "embedder": getattr(embedder, "name", type(embedder).__name__)}
    return {"available": False, "reason": reason}


__all__ = ["resolve_device", "load_model", "add_model_args", "build_model", "codes",
           "render_options", "check_camera_flags", "render_frames", "check_out", "vggs", "vgg_missing", "csim_info",
           "json_object", "check_dataset_dir", "check_model_overrides", "removed_on_error", "topmost_missing", "check_int", "check_number", "check_seed", "flag_named", "PRECISION_HELP", "IDENTITY_HELP"]
