"""2D rendering stages of the head model."""
from dgnerf.render.neural_renderer import NeuralRenderer

__all__ = ["NeuralRenderer"]
