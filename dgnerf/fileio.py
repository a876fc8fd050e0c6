"""Crash-safe file writing shared by the dataset writer, the trainer and the apps."""
from __future__ import annotations

import os


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers see the old or the new file,
    never half of one (also after a crash or SIGKILL)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())
