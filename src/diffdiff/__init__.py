"""diffdiff: graded image editing with diffusion models (Differential Diffusion and friends)."""

from __future__ import annotations

__version__ = "0.1.0"

from .changemap import map_to_array, prepare_change_map  # noqa: E402
from .editor import DiffDiffWarning, Editor  # noqa: E402
from .errors import DiffDiffError, ModelLoadError, UnsupportedModelError  # noqa: E402
from .io import read_metadata, save_png_atomic  # noqa: E402

__all__ = [
    "DiffDiffError",
    "DiffDiffWarning",
    "Editor",
    "ModelLoadError",
    "UnsupportedModelError",
    "__version__",
    "map_to_array",
    "prepare_change_map",
    "read_metadata",
    "save_png_atomic",
]
