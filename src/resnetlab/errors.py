"""The one exception type that the CLI turns into a one-line error message."""


class ResnetlabError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message must be one line and name the file, flag or key at fault.
    """


class RunStopped(ResnetlabError):
    """A run stopped by SIGINT or SIGTERM after saving its state; the CLI exits with
    ``exit_code`` (128 + the signal's number: 130 or 143)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LostProcess(ResnetlabError):
    """Under torchrun, a collective failed: another process is gone (its machine killed or
    cut off) or did not answer within --dist-timeout. Every process that remains says so,
    not rank 0 alone, which may be the one lost."""
