"""dgnerf: a drivable, generalizable head radiance field and the fused CPU/CUDA engine that renders it."""
from dgnerf import _ext, ops  # noqa: F401  (_ext loads the compiled ops)
from dgnerf._version import __version__

__all__ = ["__version__", "ops"]
