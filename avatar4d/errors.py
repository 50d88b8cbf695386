"""Errors that mean "the user asked for something impossible" (bad path, unknown preset, a file
that is not ours). The CLI prints them as one line instead of a traceback."""


class UserError(ValueError):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""
