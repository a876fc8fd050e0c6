"""dgnerf: a drivable, generalizable head radiance field and the fused CPU/CUDA engine that renders it."""
__version__ = "0.1.0"

from dgnerf import _ext  # noqa: F401  (loads the compiled ops, or warns once and falls back)
from dgnerf import ops  # noqa: F401
