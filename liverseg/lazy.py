"""Package ``__init__`` files that import none of their modules: each public name loads its module on first
use (PEP 562). A package that imports its own modules at the top runs into itself half-imported when one
of them imports a sibling through it; this way the modules import each other directly, one way.

    __all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {"module": ("name", ...), ...})
"""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """(``__all__``, ``__getattr__``, ``__dir__``) for ``package`` whose names are ``exports``
    ({module: names}); a name asked for is imported from its module and kept in ``namespace``."""
    module_of = {name: module for module, names in exports.items() for name in names}
    public = sorted(module_of)

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return public, __getattr__, __dir__


__all__ = ["lazy_exports"]
