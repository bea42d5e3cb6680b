"""The one exception type the CLI turns into a single clear error line and a non-zero exit."""


class KscliError(Exception):
    """A user-facing error: the message names the file, the record and the field, and what to do."""
