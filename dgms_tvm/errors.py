"""The error type that CLIs print as one line and exit non-zero on."""


class UserError(Exception):
    """Bad input or a missing prerequisite: the message is the whole story for the user."""
