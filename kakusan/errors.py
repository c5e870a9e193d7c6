"""Errors that are the user's to fix: reported as one paragraph, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (config, data, weights, paths). The message says what is wrong and how to fix it."""


def is_user_error(exc: BaseException) -> bool:
    from datamodules.base import DataError

    return isinstance(exc, (UserError, DataError))
