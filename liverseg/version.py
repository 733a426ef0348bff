"""The package version, in a module of its own so that any layer can read it without importing the
``liverseg`` package's entry point (``liverseg.segment`` sits above everything)."""

__version__ = "0.1.0"
