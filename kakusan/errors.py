"""Errors that are the user's to fix: reported as one paragraph, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, weights, paths). The message says what is wrong and how to fix it."""


def is_user_error(exc: BaseException | None) -> bool:
    """True for a user mistake, also when wrapped (Hydra wraps errors raised while instantiating)."""
    from datamodules.base import DataError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (UserError, DataError)):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False
