"""The package version (one place; dgnerf.__version__)."""
__version__ = "0.1.0"
