"""Datasets: the on-disk format (format.py), the built-in procedural multi-identity head set (synthetic.py)."""
from dgnerf.data.format import (
    FORMAT_VERSION,
    DatasetWriter,
    HeadDataset,
    check_dataset,
    read_manifest,
    rotation_problem,
)

__all__ = ["FORMAT_VERSION", "DatasetWriter", "HeadDataset", "check_dataset", "read_manifest", "rotation_problem"]
