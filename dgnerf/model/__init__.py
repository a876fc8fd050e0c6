"""The drivable head model: HeadConfig (every number of the model), HeadModel (reference and fast paths),
RenderOptions / Render (how to render, what comes back), checkpoints."""
from dgnerf.model.config import HeadConfig
from dgnerf.model.encoding import positional_encoding
from dgnerf.model.field import FieldMLP
from dgnerf.model.head import PATHS, STAGES, HeadModel, Render, RenderOptions

__all__ = ["HeadConfig", "HeadModel", "Render", "RenderOptions", "FieldMLP", "positional_encoding", "PATHS", "STAGES"]
