"""Command line: one subcommand -> one library call, no logic of its own.

A ``LiversegError`` becomes one line on stderr and exit code 2. ``entry`` holds ``main`` (the console
script ``liverseg``, and ``python -m liverseg``), ``parser`` the grammar, ``grammar`` liverseg's argparse
classes, ``commands`` and ``predict`` the handlers, ``values`` the option values spelled as text. The
package imports none of them; ``main`` and ``build_parser`` load their module on first use.
"""
from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "entry": ("main",),
    "parser": ("build_parser",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name of one of the modules, which is imported now (PEP 562): the package imports none of
    its modules itself, so a module importing a sibling never runs into a half-imported package."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
