"""The one exception type for mistakes a user can fix.

The CLI turns an :class:`EaqError` into a one-line message and exit code 2, with no traceback.
Anything else that escapes is a bug in eaq and keeps its traceback.
"""


class EaqError(Exception):
    """A user mistake: bad input, a missing file, an impossible request."""


def choices_hint(valid) -> str:
    """Return ``"valid: a, b, c"`` for an error message."""
    return "valid: " + ", ".join(str(v) for v in valid)


def like_default(value, default) -> bool:
    """Whether a user-given ``value`` has the type of an option's ``default``.

    A bool must be a bool; an int option takes ints, a float option ints or floats (never a
    bool); any other default its own type. A None default takes anything.

    Examples:
        >>> like_default(3, 0.5), like_default(0.5, 3), like_default(True, 1), like_default("a", "")
        (True, False, False, True)
    """
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and (isinstance(value, int) or isinstance(default, float))
    return isinstance(value, type(default))
