"""The one exception type the CLI turns into a clean one-line error (no traceback)."""


class HandheldError(Exception):
    """A problem with the user's input or environment, worded for the user."""
