"""The video edit flow behind :meth:`diffdiff.Editor.edit_video`.

Read the clip and its per-frame map once (limits, lengths and aspect ratios checked before any
model call), hand a :class:`~diffdiff.families.video.VideoJob` to the video family, then resize
the frames back, paste back per frame where that frame's map is 0, and attach the metadata to
each frame. A clip whose map (or strength) allows no change comes back as it went in, without a
model call. Image families refuse in one line naming the video families.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from PIL import Image

from .errors import DiffDiffError
from .families.base import RunInfo
from .families.video import VideoJob, VideoWork, video_family_for, video_family_names
from .io import check_pixel_limit, map_sha256
from .request import EditRequest
from .version import __version__
from .video import (
    DEFAULT_MAX_FRAMES,
    MapSource,
    VideoLike,
    frames_sha256,
    load_frames,
    load_video_maps,
    paste_back_frames,
)

#: What the metadata says about the temporal map rule (and the README repeats).
TEMPORAL_RULE = "latent frame map = max of the per-frame maps it covers (spatial box filter first)"


def edit_video(
    adapter: Any,
    model_name: str,
    video: VideoLike,
    change_map: MapSource,
    request: EditRequest,
    map_ramp: Optional[tuple[float, float]] = None,
    max_frames: Optional[int] = DEFAULT_MAX_FRAMES,
    max_pixels: Optional[int] = None,
) -> tuple[Any, RunInfo]:
    """Edit a clip where its per-frame change map allows; returns (frames or latents, run details)."""
    family = video_family_for(adapter)
    if family is None:
        raise DiffDiffError(f"the {adapter.name} family edits images; edit_video needs a video-to-video model: "
                            + ", ".join(video_family_names()))
    if request.num_images != 1:
        raise DiffDiffError("video edits produce one clip per call (num_images must be 1)")
    frames, fps = load_frames(video, max_frames)
    check_pixel_limit(*frames[0].size, max_pixels)
    change = load_video_maps(change_map, len(frames), frames[0].size, request.polarity, map_ramp, max_frames)
    request = request.with_seed()
    meta = metadata_for(adapter, model_name, request, frames, change, fps, map_ramp)
    planned = family.planned_steps(request.num_inference_steps, request.strength)
    if planned == 0 or not np.any(change > 0):
        if request.output_type == "latent":
            raise DiffDiffError("nothing to denoise: strength or the change map is zero everywhere")
        return [_finish(f.copy(), meta, i) for i, f in enumerate(frames)], RunInfo()
    out, info, work = family.run_video(VideoJob(frames, change, request))
    if request.output_type == "latent":
        return out, info
    meta["latent_frames"] = len(work.groups)
    meta["model_frames"] = len(work.frames)
    return finish_frames(out, frames, change, request, meta, work), info


def finish_frames(out: np.ndarray, frames: list[Image.Image], change: np.ndarray, request: EditRequest,
                  meta: dict[str, Any], work: VideoWork) -> list[Image.Image]:
    """uint8 frames at the work size -> PIL frames at the clip's size, pasted back, with metadata."""
    size = frames[0].size
    results = [Image.fromarray(arr, "RGB") for arr in out]
    results = [r if r.size == size else r.resize(size, Image.Resampling.LANCZOS) for r in results]
    if request.paste_back:
        results = paste_back_frames(results, frames, change)
    return [_finish(r, meta, i) for i, r in enumerate(results)]


def metadata_for(adapter: Any, model_name: str, request: EditRequest, frames: list[Image.Image],
                 change: np.ndarray, fps: float, map_ramp: Optional[tuple[float, float]]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model": model_name,
        "family": adapter.name,
        **request.metadata_fields(adapter.default_guidance()),
        "frames": len(frames),
        "fps": float(fps),
        "map_sha256": map_sha256(change),
        "video_sha256": frames_sha256(frames),
        "map_ramp": list(map_ramp) if map_ramp is not None else None,
        "temporal_map_rule": TEMPORAL_RULE,
        "scheduler": type(adapter.pipe.scheduler).__name__,
        "diffdiff_version": __version__,
    }
    meta.pop("num_images", None)
    meta.update(request.metadata)
    return meta


def _finish(img: Image.Image, meta: dict[str, Any], index: int) -> Image.Image:
    img.info["diffdiff"] = dict(meta, frame=index)
    return img
