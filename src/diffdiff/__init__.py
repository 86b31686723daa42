"""diffdiff: graded image editing with diffusion models (Differential Diffusion and friends)."""

from __future__ import annotations

from .changemap import map_to_array, prepare_change_map  # noqa: E402
from .editor import Editor  # noqa: E402
from .errors import DiffDiffError, DiffDiffWarning, ModelLoadError, UnsupportedModelError  # noqa: E402
from .io import read_metadata, save_png_atomic  # noqa: E402
from .request import EditRequest  # noqa: E402
from .version import __version__

__all__ = [
    "DiffDiffError",
    "DiffDiffWarning",
    "EditRequest",
    "Editor",
    "ModelLoadError",
    "UnsupportedModelError",
    "__version__",
    "map_to_array",
    "prepare_change_map",
    "read_metadata",
    "save_png_atomic",
]
