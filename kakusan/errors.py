"""Errors that are the user's to fix: reported as one paragraph, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, weights, paths). The message says what is wrong and how to fix it."""


def user_error_of(exc: BaseException | None) -> BaseException | None:
    """The user mistake (UserError or DataError) behind ``exc``, also when wrapped (Hydra wraps errors
    raised while instantiating); None for anything else."""
    from datamodules.base import DataError

    for _ in range(10):  # a cause chain is short; the bound guards against cycles
        if exc is None or isinstance(exc, (UserError, DataError)):
            return exc
        exc = exc.__cause__
    return None
