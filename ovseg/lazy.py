"""Package attributes imported on first use (PEP 562), so that importing a package costs only what is used.

A Flower SuperNode starts one ClientApp process per message, and three of SecAgg+'s four stages per round touch
no tensor: with eager package imports each of those processes paid torch's, timm's and transformers' import time
(about 9 s on a loaded 2-core machine) for nothing. ``lazy_exports`` keeps each package's public names as they
were, resolved from their modules when first read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``exports`` maps a public name to the submodule (relative to ``package``) that defines it. Returns the
    package's ``__getattr__`` and ``__dir__``."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later reads skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
