"""Head-model checkpoints: one .safetensors file, weights as tensors, the JSON config and a format
version in its metadata. Nothing is ever unpickled.

    save_checkpoint("head.safetensors", model)                # -> path
    model = load_checkpoint("head.safetensors", device="cpu")  # HeadModel in eval mode
    cfg, state, meta = read_checkpoint("head.safetensors")     # without building a model

A directory is accepted too: it must hold `model.safetensors` (config in its metadata, or a
`config.json` next to it). Loading checks the format, the version, every tensor name and shape
against the model the config builds, and that the weights are finite, and says exactly what is
wrong (DgnerfError).
"""
from __future__ import annotations

import json
import os
import struct

import torch

import dgnerf
from dgnerf.errors import DgnerfError
from dgnerf.model.config import HeadConfig
from dgnerf.model.head import HeadModel
from dgnerf.model.prior import apply_head_prior

FORMAT = "dgnerf.head"
FORMAT_VERSION = 1
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def save_checkpoint(path: str, model, metadata: dict | None = None) -> str:
    """Write model.state_dict() and model.cfg to `path` (.safetensors; a directory gets model.safetensors)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not path.endswith(".safetensors"):
        raise DgnerfError(f"save_checkpoint: argument 'path' should end in .safetensors, got {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DgnerfError(f"save_checkpoint: the directory {parent!r} does not exist")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": model.cfg.to_json()}
    try:
        meta["dgnerf_version"] = dgnerf.__version__
    except Exception:  # pragma: no cover
        pass
    for k, v in (metadata or {}).items():
        if k in meta:
            raise DgnerfError(f"save_checkpoint: metadata key {k!r} is reserved")
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def _resolve(path) -> tuple[str, str | None]:
    path = os.fspath(path)
    if os.path.isdir(path):
        f = os.path.join(path, "model.safetensors")
        if not os.path.isfile(f):
            raise DgnerfError(f"checkpoint directory {path!r} has no model.safetensors")
        cfg = os.path.join(path, "config.json")
        return f, cfg if os.path.isfile(cfg) else None
    if not os.path.exists(path):
        raise DgnerfError(f"checkpoint {path!r} does not exist")
    return path, None


def _read_header(path: str) -> dict:
    """Parse and validate the safetensors header ourselves, so truncation or corruption gets a clear message."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DgnerfError(f"checkpoint {path!r} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > size - 8 or n > 100_000_000:
            raise DgnerfError(f"checkpoint {path!r} is corrupted or truncated: its header claims {n} bytes but the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DgnerfError(f"checkpoint {path!r} is corrupted: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise DgnerfError(f"checkpoint {path!r} is corrupted: its safetensors header is not a JSON object")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            nbytes = _DTYPE_BYTES[info["dtype"]]
            numel = 1
            for s in info["shape"]:
                numel *= int(s)
        except (KeyError, TypeError, ValueError):
            raise DgnerfError(f"checkpoint {path!r} is corrupted: bad header entry for tensor {name!r}") from None
        if end > data_len:
            raise DgnerfError(f"checkpoint {path!r} is truncated: tensor {name!r} ends at byte {end} of the data "
                              f"but only {data_len} bytes are present")
        if end - begin != numel * nbytes:
            raise DgnerfError(f"checkpoint {path!r} is corrupted: tensor {name!r} has {end - begin} bytes, "
                              f"its shape and dtype need {numel * nbytes}")
    return header


def read_checkpoint(path):
    """-> (HeadConfig, state_dict of CPU tensors, metadata dict). Raises DgnerfError on any problem."""
    from safetensors import safe_open

    file, cfg_file = _resolve(path)
    header = _read_header(file)
    meta = dict(header.get("__metadata__") or {})
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise DgnerfError(f"checkpoint {file!r} is not a dgnerf head checkpoint (metadata format={fmt!r}, expected {FORMAT!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise DgnerfError(f"checkpoint {file!r} has an unreadable format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise DgnerfError(f"checkpoint {file!r} has format version {version}, newer than this dgnerf reads "
                          f"({FORMAT_VERSION}); upgrade dgnerf")
    if "config" in meta:
        cfg_text = meta["config"]
    elif cfg_file is not None:
        with open(cfg_file) as f:
            cfg_text = f.read()
    else:
        raise DgnerfError(f"checkpoint {file!r} has no config (neither in its metadata nor a config.json beside it)")
    try:
        cfg = HeadConfig.from_json(cfg_text)
    except DgnerfError as e:
        raise DgnerfError(f"checkpoint {file!r}: {e}") from None
    if not cfg.world_frame:
        legacy = legacy_world_frame(meta)  # checkpoints written before the config held it
        if legacy is not None:
            cfg.world_frame = tuple(legacy.reshape(-1).tolist())
    try:
        state = {}
        with safe_open(file, framework="pt", device="cpu") as f:
            for k in f.keys():
                state[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types
        raise DgnerfError(f"checkpoint {file!r} could not be read: {e}") from None
    return cfg, state, meta


def check_state_dict(model, state: dict, source: str = "checkpoint") -> None:
    """Raise DgnerfError listing missing, unexpected and mis-shaped tensors, and non-finite weights."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {list(state[k].shape)} in {source}, model expects {list(expected[k])}"
              for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if problems:
        raise DgnerfError(f"{source} does not match the model: " + " | ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DgnerfError(f"{source} has NaN/Inf values in {bad}")


def load_checkpoint(path, device="cpu"):
    """Build the HeadModel of the checkpoint's config, load and check its weights -> model (eval mode)."""
    cfg, state, meta = read_checkpoint(path)
    model = HeadModel(cfg)
    check_state_dict(model, state, source=f"checkpoint {os.fspath(path)!r}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def legacy_world_frame(meta: dict) -> torch.Tensor | None:
    """The world frame W [3,3] that earlier trainers wrote into the metadata (now HeadConfig.world_frame), or None."""
    text = meta.get("world_frame")
    if not text:
        return None
    try:
        W = torch.tensor(json.loads(text), dtype=torch.float32)
    except (ValueError, TypeError):
        return None
    if W.shape != (3, 3) or not torch.isfinite(W).all():
        return None
    return W


def init_checkpoint(path, cfg=None, seed: int = 0, head_prior: bool = True) -> str:
    """Write a randomly initialised head model (so the commands work before any training); with
    head_prior its density is an ellipsoid around the origin (dgnerf.model.prior), not fog."""
    torch.manual_seed(seed)
    model = HeadModel(cfg)
    if head_prior:
        apply_head_prior(model)
    note = "random initialisation (untrained)" + (" with the ellipsoid density prior" if head_prior else "")
    return save_checkpoint(path, model, metadata={"note": note, "seed": seed})


__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "check_state_dict", "init_checkpoint",
           "FORMAT", "FORMAT_VERSION"]
