"""The one exception type that the CLI turns into a one-line error."""


class FastvipError(Exception):
    """Bad input or an unrecoverable condition the user can act on.

    The CLI prints ``error: <message>`` and exits non-zero; the traceback is
    shown only with ``--debug``.
    """
