"""Errors meant for the user: raised at the boundary (CLI, file readers, converter, public functions)."""


class UserError(ValueError):
    """A problem with the user's input; the CLI prints it as one line and exits with code 2."""
