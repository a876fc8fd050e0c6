"""dgnerf: a drivable, generalizable head radiance field and the fused CPU/CUDA engine that renders it."""
from dgnerf._version import __version__  # noqa: F401

from dgnerf import _ext
from dgnerf import ops
