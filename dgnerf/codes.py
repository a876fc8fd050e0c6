"""Identity and expression codes: their sizes, and the code files every command reads and writes.

An identity code is a 512-d face-recognition feature (L2-normalised); an expression code has 46 coefficients
in the dataset's expression basis (docs/dataset.md). Code files: .npy (np.load with allow_pickle=False),
.txt (whitespace/comma separated numbers) or .safetensors (its single tensor, or the one named like the
code); `zeros` and `random[:SEED]` stand for a zero and a seeded Gaussian code.
"""
from __future__ import annotations

import json
import os

import numpy as np
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

from dgnerf.errors import DgnerfError

IDENTITY_DIM = 512
EXPRESSION_DIM = 46
# Tensor names older code files used for the codes.
LEGACY_KEYS = {"identity": ("z_id",), "expression": ("beta",)}


def load_code(spec: str, dim: int, name: str) -> torch.Tensor:
    """A code of length `dim` from a file or `zeros` / `random[:SEED]` -> float32 tensor [1, dim]."""
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
            tensors = safetensors.numpy.load_file(spec)
            if len(tensors) == 1:
                arr = next(iter(tensors.values()))
            else:
                keys = [k for k in (name, "code", *LEGACY_KEYS[name]) if k in tensors]
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


def save_identity(path: str, z: torch.Tensor) -> str:
    """{'identity': [I]}: readable by `dgnerf render --identity` and `dgnerf drive --target`."""
    safetensors.torch.save_file({"identity": z.reshape(-1).contiguous().float()}, path, metadata={"format": "dgnerf-identity-code"})
    return path


def load_identity(path: str, dim: int) -> torch.Tensor:
    """An identity code [1, dim] from a fit's codes.safetensors (its single person), an identity file, or
    anything `dgnerf render --identity` reads."""
    if path.endswith(".safetensors"):
        try:
            with safetensors.safe_open(path, "pt") as f:
                keys = list(f.keys())
                meta = f.metadata() or {}
                if meta.get("format") == "dgnerf-fit-codes":
                    z = f.get_tensor("identity")
                    if z.shape[0] != 1:
                        raise DgnerfError(f"--target {path!r} holds the codes of {z.shape[0]} persons "
                                          f"{json.loads(meta.get('persons', '[]'))}; pass one of the "
                                          "identity_<person>.safetensors files written beside it")
                    if z.shape[1] != dim:
                        raise DgnerfError(f"--target {path!r}: identity is {z.shape[1]}-d, the checkpoint expects {dim}")
                    return z.float()
        except DgnerfError:
            raise
        except Exception:
            keys = None  # not readable here: load_code reports it
        del keys
    return load_code(path, dim, "identity")


__all__ = ["IDENTITY_DIM", "EXPRESSION_DIM", "load_code", "save_identity", "load_identity"]
