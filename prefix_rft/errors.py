"""User-facing errors: bad config, bad data, bad paths.

A `UserError` is something the user can fix; the CLI prints its message as one line and exits
with status 2, without a traceback. Messages name the file, row, field or key and say what was
expected.
"""


class UserError(Exception):
    """An error caused by user input (config, data file, CLI argument)."""


class UnavailableError(UserError):
    """A service or storage that did not answer (tracking server down, S3 endpoint unreachable,
    throttled): reported like any UserError, but the user's setting may be right, so a retried
    pipeline step runs again on it (other UserErrors fail the step at once)."""
