"""The error types users see: bad input (a bad config, a bad data line, a missing file, a full disk), and an
external service that failed after its retries.

The CLI prints either as a single line and exits with its `exit_code` (2 for bad input, 3 for a service);
everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user. `where` is 'file:line' or a config key path, when known."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ServiceError(UserError, RuntimeError):
    """A reward server or LLM judge that timed out, refused or answered garbage, after the configured retries.
    `where` names the config key that points at it; what was finished before stays, so a rerun resumes."""

    exit_code = 3
