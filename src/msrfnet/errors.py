"""The package's own error: a one-line message for a user, shown by the CLI without a traceback."""

__all__ = ["MSRFError", "first_line"]


class MSRFError(ValueError):
    """A problem with the user's input (a file, an option, a checkpoint), not a bug.

    The message names the file and says what is wrong and, where it can, what to do. A
    ``ValueError``, so that code catching a bad argument as Python's usual exception keeps working.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none: what a
    one-line :class:`MSRFError` quotes of a library's failure (the traceback shows with
    ``--debug``)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
