"""Errors and warnings diffdiff reports to users as one clear line (the CLI prints them without traceback)."""

from __future__ import annotations

from typing import Optional


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


class PipelineArgumentError(DiffDiffError):
    """The diffusers call failed on a run given ``pipeline_kwargs``: a value the pipeline does not accept.

    diffdiff passes those arguments through unread, so only the pipeline knows their ranges; its
    failure is reported as the caller's input (one line naming the arguments and the pipeline's error).
    """

    def __init__(self, kwargs: dict, cause: BaseException, label: Optional[str] = None) -> None:
        first = (str(cause).strip().splitlines() or ["no message"])[0]
        what = label or f"pipeline_kwargs ({', '.join(sorted(kwargs))})"
        super().__init__(f"{what}: the pipeline refused them: {type(cause).__name__}: {first}")
