"""The one exception type that the CLI turns into a one-line error message."""


class ResnetlabError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message must be one line and name the file, flag or key at fault.
    """
