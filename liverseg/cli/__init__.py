"""Command line: one subcommand -> one library call, no logic of its own.

A ``LiversegError`` becomes one line on stderr and exit code 2. ``entry`` holds ``main`` (the console
script ``liverseg``, and ``python -m liverseg``), ``parser`` the grammar, ``grammar`` liverseg's argparse
classes, ``commands`` and ``predict`` the handlers, ``values`` the option values spelled as text. The
package imports none of them; ``main`` and ``build_parser`` load their module on first use.
"""
from __future__ import annotations

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "entry": ("main",),
    "parser": ("build_parser",),
})
