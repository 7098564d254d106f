"""Failures to connect to the database, marked where they are raised.

SQLAlchemy leaves a socket error or a timeout raised while its pool opens a connection
unwrapped (an ``OSError``, a ``TimeoutError``: not DB-API errors), so the exception's type
does not say it is the database's. Its traceback's frames did (``problems.is_unavailable``),
but they do not survive an exception raised to many requests: one API key lookup's failure
goes to every request that waited for it, and Starlette clears ``__traceback__`` of an
exception once it has handled it (the next request's copy has no driver frames: a 500, not a
503). The engine marks such an exception on itself instead (``_postgresql/_engine.py``).
"""

from __future__ import annotations

__all__ = ["failed_to_connect", "mark_connect_failure"]

# The attribute that marks an exception as a failure to connect to the database.
_CONNECT_FAILURE = "_stockroom_connect_failure"


def mark_connect_failure(exc: BaseException) -> None:
    """Say, on the exception itself, that ``exc`` is the database's: a connection could not
    be made (refused, reset, timed out)."""
    setattr(exc, _CONNECT_FAILURE, True)


def failed_to_connect(exc: BaseException) -> bool:
    """Whether ``exc`` was marked by :func:`mark_connect_failure`."""
    return getattr(exc, _CONNECT_FAILURE, False) is True
