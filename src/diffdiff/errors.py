"""Errors and warnings diffdiff reports to users as one clear line (the CLI prints them without traceback)."""

from __future__ import annotations


class DiffDiffError(ValueError):
    """A problem with the user's input or setup, with a message that says what to do."""


class UnsupportedModelError(DiffDiffError):
    """The loaded pipeline belongs to no family diffdiff knows how to drive."""


class ModelLoadError(DiffDiffError):
    """A model could not be loaded (missing folder, not in the offline cache, bad file)."""


class DiffDiffWarning(UserWarning):
    """Something the user should know about a run (shown by the CLI as a one-line warning)."""


class UnsupportedFeatureError(DiffDiffError):
    """The loaded model's family cannot do this operation (e.g. DiffEdit on SD3); the server answers 501."""
