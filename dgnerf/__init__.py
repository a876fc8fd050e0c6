"""dgnerf: a drivable, generalizable head radiance field and the fused CPU/CUDA engine that renders it."""
from dgnerf import _ext, ops
from dgnerf._version import __version__

__all__ = ["__version__", "ops"]
