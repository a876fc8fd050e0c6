"""Datasets: the on-disk format (format.py), the built-in procedural multi-identity head set (synthetic.py)."""
from dgnerf.data.format import (  # noqa: F401
    DEFAULT_EXPRESSION_DIM,
    DEFAULT_IDENTITY_DIM,
    FORMAT_VERSION,
    DatasetWriter,
    HeadDataset,
    check_dataset,
    read_manifest,
    rotation_problem,
)
from dgnerf.data.cameras import pixel_rays, look_at_c2w  # noqa: F401
