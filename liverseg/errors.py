"""Exceptions that carry a message meant for the user.

``cli.main`` prints a ``LiversegError`` as one line on stderr and exits with code 2, so every
message must name the file or value at fault, what was expected and how to fix it.
"""


class LiversegError(Exception):
    """Base class of every error liverseg raises on purpose."""


class ConfigError(LiversegError):
    """A configuration file, key or value is invalid."""


class InputError(LiversegError):
    """An input file or folder cannot be read or is not usable."""


class GeometryError(LiversegError):
    """Two volumes that must share a voxel grid do not."""
