"""Exceptions that carry a message meant for the user.

``cli.main`` prints a ``LiversegError`` as one line on stderr and exits with code 2, so every
message must name the file or value at fault, what was expected and how to fix it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class LiversegError(Exception):
    """Base class of every error liverseg raises on purpose."""


class ConfigError(LiversegError):
    """A configuration file, key or value is invalid."""


class InputError(LiversegError):
    """An input file or folder cannot be read or is not usable."""


class GeometryError(LiversegError):
    """Two volumes that must share a voxel grid do not."""


@contextmanager
def surface_user_errors() -> Iterator[None]:
    """Re-raise a LiversegError that a library wrapped in another exception.

    MONAI's ``apply_transform`` turns every exception raised inside a transform into
    ``RuntimeError("applying transform ...")``; the user must see our message (e.g. a label that is
    not on its image's grid), not that wrapper and its traceback.
    """
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, LiversegError):
                raise cause from None
            cause = cause.__cause__
        raise
