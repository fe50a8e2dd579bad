"""The one exception type the toolkit raises for bad input, so the CLI can print it in one line."""


class CleanDiftError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""
