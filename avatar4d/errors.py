"""Errors that mean "the user asked for something impossible" (bad path, unknown preset, a file
that is not ours) and the exit codes the CLI gives them.

Exit codes of ``avatar4d`` (documented in the README's "Command line" section):

- 0: success;
- 1 (:data:`EXIT_USER_ERROR`): a user or data error (:class:`UserError`), printed as one line;
- 2 (:data:`EXIT_USAGE`): a usage error found by argparse (unknown option, bad value type);
- 69 (:data:`EXIT_UNAVAILABLE`, ``EX_UNAVAILABLE`` of BSD's ``sysexits.h``): the command exists but
  is not available yet (:class:`NotAvailableError`);
- 130: interrupted (Ctrl-C).
"""

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A mistake in the user's input; the message says what is wrong and how to fix it."""

    exit_code = EXIT_USER_ERROR


class NotAvailableError(UserError):
    """The command is announced but not built yet (or its optional package is missing)."""

    exit_code = EXIT_UNAVAILABLE
