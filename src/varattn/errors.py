"""Errors a user can cause: the CLI prints them as one line and exits non-zero."""


class VarattnError(Exception):
    """A problem with the user's input (a path, a mode name, a corpus, a checkpoint).

    The command-line interface catches this class, prints ``error: <message>`` on one line
    and exits with status 2, without a traceback.
    """
