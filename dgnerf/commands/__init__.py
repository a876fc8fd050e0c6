"""Sub-commands of the `dgnerf` CLI, one module each (see dgnerf/cli.py)."""
