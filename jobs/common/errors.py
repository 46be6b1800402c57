"""Exceptions a user can act on. The CLI prints their message without a traceback."""


class CleanwellError(Exception):
    """Base class: anything raised on purpose, with a message that says what to do."""


class ConfigError(CleanwellError):
    """A config file or override is missing, malformed, or names an unknown key."""


class SetupError(CleanwellError):
    """The environment is incomplete (e.g. Delta Lake JARs not fetched yet)."""


class InputError(CleanwellError):
    """An input table or file is missing or lacks required columns."""


class ConcurrentWriteError(CleanwellError):
    """Another writer kept committing to the same Delta table; retries ran out."""


class GateFailed(CleanwellError):
    """A Great Expectations gate failed; nothing was published."""

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result
