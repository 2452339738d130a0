"""The one exception type for mistakes a user can fix.

The CLI turns an :class:`EaqError` into a one-line message and exit code 2, with no traceback.
Anything else that escapes is a bug in eaq and keeps its traceback.
"""


class EaqError(Exception):
    """A user mistake: bad input, a missing file, an impossible request."""


def choices_hint(valid) -> str:
    """Return ``"valid: a, b, c"`` for an error message."""
    return "valid: " + ", ".join(str(v) for v in valid)
