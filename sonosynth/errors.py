"""The one exception type users see: a message that names the file and the problem."""


class SonosynthError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


class DataError(SonosynthError):
    """Bad input data: unreadable files, mismatched pairs, invalid labels, bad layout."""
