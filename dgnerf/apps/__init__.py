"""Applications of a trained head model: interpolation grids (and, later, fitting and driving)."""
