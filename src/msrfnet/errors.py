"""The package's own error: a one-line message for a user, shown by the CLI without a traceback."""


class MSRFError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint), not a bug.

    The message names the file and says what is wrong and, where it can, what to do.
    """
