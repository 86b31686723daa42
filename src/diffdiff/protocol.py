"""The small interface the tools (strength fan, soft-inpainting, DiffEdit) need from an editor.

The tools depend on this protocol, not on :mod:`diffdiff.editor`: the editor imports the tools,
never the other way round. :class:`diffdiff.Editor` satisfies it.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from .io import ImageLike
from .request import EditRequest


class EditorLike(Protocol):
    """What a tool may use: the pipeline, geometry, the step rule and one way to run an edit."""

    pipe: Any
    model_name: str

    @property
    def family(self) -> str: ...

    def planned_steps(self, num_inference_steps: int, strength: float) -> int: ...

    def work_size(self, width: int, height: int) -> tuple[int, int]: ...

    def default_guidance(self) -> Optional[float]: ...

    def edit_with(self, image: ImageLike, change_map: Any, request: EditRequest) -> Any: ...
