"""User-facing errors: bad config, bad data, bad paths.

A `UserError` is something the user can fix; the CLI prints its message as one line and exits
with status 2, without a traceback. Messages name the file, row, field or key and say what was
expected.
"""


class UserError(Exception):
    """An error caused by user input (config, data file, CLI argument)."""
