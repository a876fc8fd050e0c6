"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits non-zero."""


class DgnerfError(Exception):
    """A problem with the user's input, files or environment, stated so they can fix it."""
