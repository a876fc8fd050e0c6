"""The drivable head model: HeadConfig (every number of DESIGN §2) and HeadModel (reference and fast paths)."""
from dgnerf.model.config import HeadConfig
from dgnerf.model.field import FieldMLP, positional_encoding
from dgnerf.model.head import PATHS, PRECISIONS, STAGES, HeadModel, psnr

__all__ = ["HeadConfig", "HeadModel", "FieldMLP", "positional_encoding", "psnr", "PATHS", "PRECISIONS", "STAGES"]
