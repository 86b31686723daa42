"""The micro model: a small Stable Diffusion trained on the procedural shapes world, shipped in the package.

Owns where the packaged weights live (:func:`model_path`) and the name that selects them
(``Editor.from_pretrained("micro")``, ``--model micro``). The data generator is
:mod:`diffdiff.micro.shapes`, the training command :mod:`diffdiff.micro.train`. This module imports
nothing heavy, so the loader can ask for the path without loading torch models.
"""

from __future__ import annotations

from pathlib import Path

#: The model name that selects the packaged micro model (a local folder of that name still wins).
MICRO_NAME = "micro"


def model_path() -> Path:
    """The folder holding the packaged micro model (diffusers ``save_pretrained`` layout)."""
    return Path(__file__).resolve().parent / "model"


__all__ = ["MICRO_NAME", "model_path"]
