"""The one exception type the CLI turns into a clean one-line error (no traceback)."""


class HandheldError(Exception):
    """A problem with the user's input or environment, worded for the user."""


def first_line(error: Exception, limit: int = 200) -> str:
    """A library's exception, shortened to fit inside a one-line HandheldError."""
    return (str(error).splitlines() or [""])[0][:limit]
