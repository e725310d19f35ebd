"""Lazy re-exports of a package's names (PEP 562), so that importing the package stays cheap."""

import importlib


def lazy_exports(package, sources):
    """``(__getattr__, __all__)`` for ``package`` re-exporting ``{name: submodule}`` on first use.

    ``submodule`` is relative to ``package`` (``"models.detector"``); ``None`` exports the
    subpackage ``package.name`` itself. ``gflv2 export --help`` imports ``gflv2_keras.export.cli``,
    hence the package; with lazy re-exports that loads no TensorFlow until a name is used.
    """

    def __getattr__(name):
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if sources[name] is None:
            return importlib.import_module(f"{package}.{name}")
        return getattr(importlib.import_module(f"{package}.{sources[name]}"), name)

    return __getattr__, sorted(sources)
