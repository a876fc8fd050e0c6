"""Identity and expression codes: their sizes, and the code files every command reads and writes.

An identity code is a 512-d face-recognition feature (L2-normalised); an expression code has 46 coefficients
in the dataset's expression basis (docs/dataset.md). Code files: .npy (np.load with allow_pickle=False),
.txt (whitespace/comma separated numbers) or .safetensors (its single tensor, or the one named like the
code); `zeros` and `random[:SEED]` stand for a zero and a seeded Gaussian code.
"""
from __future__ import annotations

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


MAX_CODE_FILE_BYTES = 64 << 20  # a code is a few KB; anything this big is not a code file


def load_code(spec: str, dim: int, name: str, flag: str | None = None) -> torch.Tensor:
    """A code of length `dim` from a file or `zeros` / `random[:SEED]` -> float32 tensor [1, dim].
    Errors name `flag` (default `--<name>`), the argument the spec came from."""
    flag = flag or f"--{name}"
    if spec == "zeros":
        return torch.zeros(1, dim)
    if spec == "random" or spec.startswith("random:"):
        try:
            seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        except ValueError:
            raise DgnerfError(f"{flag}: expected random or random:SEED with an integer SEED, got {spec!r}") from None
        if not 0 <= seed < 2**63:
            raise DgnerfError(f"{flag}: the SEED of random:SEED must be in 0..2**63-1, got {seed}")
        g = torch.Generator().manual_seed(seed)
        return torch.randn(1, dim, generator=g)
    if not os.path.exists(spec):
        raise DgnerfError(f"{flag}: code file {spec!r} does not exist (expected a .npy, .txt or .safetensors file, "
                          "zeros or random[:SEED])")
    if not os.path.isfile(spec):
        raise DgnerfError(f"{flag}: {spec!r} is not a file (expected a .npy, .txt or .safetensors code file)")
    ext = os.path.splitext(spec)[1].lower()
    if ext in (".npy", ".txt", ".safetensors") and os.path.getsize(spec) > MAX_CODE_FILE_BYTES:
        raise DgnerfError(f"{flag}: {spec!r} is {os.path.getsize(spec)} bytes, far too big for a code of {dim} numbers")
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
                    raise DgnerfError(f"{flag}: {spec!r} holds tensors {sorted(tensors)}; expected one tensor or one named "
                                      f"{name!r} or 'code'")
                arr = tensors[keys[0]]
        else:
            raise DgnerfError(f"{flag}: unsupported code file type {ext!r} ({spec!r}); use .npy, .txt or .safetensors")
    except DgnerfError:
        raise
    except Exception as e:
        raise DgnerfError(f"{flag}: could not read {spec!r} as a {ext} code file: {_short(e)}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise DgnerfError(f"{flag}: {spec!r} holds {arr.dtype} values, expected numbers")
    if arr.size != dim:
        raise DgnerfError(f"{flag}: {spec!r} holds {arr.size} numbers, expected {dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(np.float32).reshape(-1)
    if not np.isfinite(arr).all():
        raise DgnerfError(f"{flag}: {spec!r} contains {int((~np.isfinite(arr)).sum())} NaN/Inf values "
                          "(or values beyond float32)")
    return torch.from_numpy(arr.copy())[None]


def _short(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def save_identity(path: str, z: torch.Tensor) -> str:
    """{'identity': [I]}: readable by `dgnerf render --identity` and `dgnerf drive --target`."""
    safetensors.torch.save_file({"identity": z.reshape(-1).contiguous().float()}, path, metadata={"format": "dgnerf-identity-code"})
    return path


def load_identity(path: str, dim: int, flag: str = "--target") -> torch.Tensor:
    """An identity code [1, dim] from a fit's codes.safetensors (its single person), an identity file, or
    anything `dgnerf render --identity` reads. Errors name `flag`."""
    if path.endswith(".safetensors") and os.path.isfile(path):
        try:
            with safetensors.safe_open(path, "pt") as f:
                keys = list(f.keys())
                meta = f.metadata() or {}
                if meta.get("format") == "dgnerf-fit-codes":
                    z = f.get_tensor("identity")
                    if z.dim() != 2:
                        raise DgnerfError(f"{flag} {path!r}: its identity tensor is {list(z.shape)}, expected [persons, {dim}]")
                    if z.shape[0] != 1:
                        raise DgnerfError(f"{flag} {path!r} holds the codes of {z.shape[0]} persons "
                                          f"{meta.get('persons', '[]')[:200]}; pass one of the "
                                          "identity_<person>.safetensors files written beside it")
                    if z.shape[1] != dim:
                        raise DgnerfError(f"{flag} {path!r}: identity is {z.shape[1]}-d, the checkpoint expects {dim}")
                    if not bool(torch.isfinite(z).all()):
                        raise DgnerfError(f"{flag} {path!r}: the identity code contains NaN/Inf values")
                    return z.float()
        except DgnerfError:
            raise
        except Exception:
            keys = None  # not readable here: load_code reports it
        del keys
    return load_code(path, dim, "identity", flag=flag)


__all__ = ["IDENTITY_DIM", "EXPRESSION_DIM", "load_code", "save_identity", "load_identity"]
