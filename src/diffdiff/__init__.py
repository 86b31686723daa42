"""diffdiff: graded image editing with diffusion models (Differential Diffusion and friends).

The public names load on first use (PEP 562), so ``diffdiff --help`` and ``diffdiff map ...`` start
without importing torch and diffusers; ``from diffdiff import Editor`` works as usual.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .version import __version__

#: public name -> the module that owns it
_EXPORTS = {
    "DiffDiffError": "errors",
    "DiffDiffWarning": "errors",
    "ModelLoadError": "errors",
    "UnsupportedModelError": "errors",
    "EditRequest": "request",
    "Editor": "editor",
    "map_to_array": "changemap",
    "prepare_change_map": "changemap",
    "read_metadata": "io",
    "save_png_atomic": "io",
}

__all__ = [
    "DiffDiffError", "DiffDiffWarning", "EditRequest", "Editor", "ModelLoadError", "UnsupportedModelError",
    "__version__", "map_to_array", "prepare_change_map", "read_metadata", "save_png_atomic",
]

if TYPE_CHECKING:
    from .changemap import map_to_array, prepare_change_map
    from .editor import Editor
    from .errors import DiffDiffError, DiffDiffWarning, ModelLoadError, UnsupportedModelError
    from .io import read_metadata, save_png_atomic
    from .request import EditRequest


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffdiff' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
