"""dgnerf: a drivable, generalizable head radiance field and the fused CPU/CUDA engine that renders it."""
from dgnerf import threads

threads.set_wait_policy()  # before torch loads its OpenMP runtime (dgnerf/threads.py)

from dgnerf import _ext, ops  # noqa: E402, F401  (_ext loads the compiled ops)
from dgnerf._version import __version__  # noqa: E402

__all__ = ["__version__", "ops"]
