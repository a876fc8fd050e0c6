"""Crash-safe file writing shared by the dataset writer, the trainer and the apps."""
from __future__ import annotations

import contextlib
import os


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers see the old or the new file,
    never half of one (also after a crash or SIGKILL)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a full disk (or a kill signal turned exception) must not leave the half-written temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_output(path: str):
    """`with atomic_output("out.png") as tmp: save(tmp)`: the writer writes a temporary file beside `path` (same
    extension, so writers that choose the format by it still do) that replaces `path` only when the block
    succeeds; on any error it is removed, so a failed command leaves neither a partial nor an empty file."""
    d, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    tmp = os.path.join(d, f".{stem}.tmp{os.getpid()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
