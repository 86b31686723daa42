"""The video-to-video families' shared part: a clip and its per-frame map, one hooked pipeline call.

A :class:`VideoAdapter` runs a diffusers video-to-video pipeline (one with ``strength``) through
:func:`~diffdiff.families.base.run_stage`, so the Differential Diffusion hook is the images' own:
the map simply lives on a 5-D grid (1, 1, latent frames, h, w) that broadcasts against the
latents (B, C, latent frames, h, w). Two layout facts vary by family: whether the pipeline noises
its reference with frames before channels (CogVideoX and AnimateDiff noise (B, F, C, h, w); the
map is then (1, F, 1, h, w)), and whether its denoising loop holds the latents transposed from
that (AnimateDiff loops on (B, C, F, h, w)); the hook transposes around the blend.

The clip is padded (last frame repeated) to a frame count the VAE packs into whole latent
frames, and the output trimmed back. Each latent frame's map is the maximum of the per-frame maps
it covers (:func:`diffdiff.video.to_latent_video_map`).

:class:`RefusedVideoAdapter` matches the video pipelines diffdiff cannot drive and refuses them
with one line naming what they lack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import DiffDiffError, UnsupportedModelError
from ..hook import DifferentialStep, NoiseCapture
from ..levels import round_to_levels
from ..numerics import to_uint8_images
from ..pipeinfo import accepted_kwargs
from ..request import EditRequest
from ..video import latent_frame_groups, pad_frames, padded_count, to_latent_video_map
from .base import Adapter, Job, RunInfo, run_stage


@dataclass
class VideoJob:
    """What a video family runs: the clip's RGB frames (one size), the per-frame map, the request."""

    frames: list[Image.Image]
    change: np.ndarray  # (F, H, W) float32 in [0, 1], the frames' size
    request: EditRequest  # seed resolved

    @property
    def output(self) -> str:
        return "latent" if self.request.output_type == "latent" else "np"


@dataclass
class VideoWork:
    """One run's prepared inputs: padded work-size frames, the map on the 5-D grid, the call arguments."""

    frames: list[Image.Image]
    count: int  # the clip's own frame count (output is trimmed to it)
    width: int
    height: int
    groups: list[tuple[int, int]]  # frames each latent frame covers
    change: torch.Tensor  # (1, 1, latent frames, h, w), or (1, latent frames, 1, h, w) for frames-first references
    kwargs: dict[str, Any]
    info: RunInfo


class VideoAdapter(Adapter):
    """Base of the video-to-video families: the clip goes in as ``video=``, frames come out."""

    #: temporal compression of the VAE when the pipeline does not say (frames per latent frame)
    temporal: ClassVar[int] = 4
    #: the VAE keeps the first frame as a latent frame of its own (causal video VAEs)
    first_frame_alone: ClassVar[bool] = True
    #: the pipeline noises its reference as (B, F, C, h, w) rather than (B, C, F, h, w)
    reference_frames_first: ClassVar[bool] = False
    #: the denoising loop's latents are the reference's layout with axes 1 and 2 swapped
    loop_transposed: ClassVar[bool] = False
    pass_size = True

    def __init__(self, pipe: Any, **parts: Any) -> None:
        super().__init__(pipe, **parts)
        if not hasattr(pipe.scheduler, "add_noise"):
            self.noise_method = "scale_noise"  # type: ignore[misc]  # flow matching (Wan with FlowMatchEuler)

    # geometry ------------------------------------------------------------------------------------
    def vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor_spatial", None) or getattr(self.pipe, "vae_scale_factor", 8))

    def pixel_multiple(self) -> int:
        """The VAE's spatial factor times the transformer's patch (UNet families: the VAE's alone)."""
        config = getattr(getattr(self.pipe, "transformer", None), "config", None)
        patch = getattr(config, "patch_size", 1) if config is not None else 1
        return self.vae_scale() * int(patch[-1] if isinstance(patch, (tuple, list)) else patch or 1)

    def temporal_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor_temporal", self.temporal) or self.temporal)

    def run_frames(self, count: int) -> int:
        """Frames the model runs on for a clip of ``count`` (padded to whole latent frames)."""
        return padded_count(count, self.temporal_factor(), self.first_frame_alone)

    def latent_groups(self, count: int) -> list[tuple[int, int]]:
        return latent_frame_groups(count, self.temporal_factor(), self.first_frame_alone)

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Loop latents -> the reference's layout (the grid the map lives on)."""
        return latents.transpose(1, 2) if self.loop_transposed else latents

    def pack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents.transpose(1, 2) if self.loop_transposed else latents

    def map_on_grid(self, latent_map: torch.Tensor) -> torch.Tensor:
        """A (1, 1, F_lat, h, w) map in the reference's layout."""
        return latent_map.transpose(1, 2) if self.reference_frames_first else latent_map

    # running -------------------------------------------------------------------------------------
    def run(self, job: Job) -> tuple[Any, RunInfo]:
        raise DiffDiffError(f"the {self.name} family edits videos, not single images: use Editor.edit_video "
                            "(CLI: diffdiff edit-video)")

    def video_kwargs(self, frames: list[Image.Image], request: EditRequest, generator: torch.Generator,
                     size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline call's arguments for a video-to-video run of ``request`` on ``frames``."""
        kw: dict[str, Any] = dict(
            video=frames, prompt=request.prompt, num_inference_steps=request.num_inference_steps,
            strength=request.strength, generator=generator, width=size[0], height=size[1],
        )
        if request.negative_prompt is not None:
            kw["negative_prompt"] = request.negative_prompt
        if request.guidance_scale is not None:
            kw["guidance_scale"] = request.guidance_scale
        return self.with_pipeline_kwargs(accepted_kwargs(self.pipe, kw), request)

    def prepare_video(self, job: VideoJob) -> VideoWork:
        request = job.request
        count = len(job.frames)
        ww, wh = self.work_size(*job.frames[0].size)
        frames = [f if f.size == (ww, wh) else f.resize((ww, wh), Image.Resampling.LANCZOS) for f in job.frames]
        frames, change = pad_frames(frames, job.change, self.run_frames(count))
        groups = self.latent_groups(len(frames))
        lh, lw = self.latent_hw(ww, wh)
        latent_map = self.map_on_grid(to_latent_video_map(change, groups, lh, lw))
        if self.is_few_step():
            latent_map = round_to_levels(latent_map, self.planned_steps(request.num_inference_steps, request.strength))
        generator = torch.Generator().manual_seed(int(request.seed))  # type: ignore[arg-type]
        kwargs = self.video_kwargs(frames, request, generator, (ww, wh))
        return VideoWork(frames, count, ww, wh, groups, latent_map, kwargs, RunInfo(work_size=(ww, wh)))

    def hook_for_video(self, work: VideoWork, capture: NoiseCapture) -> DifferentialStep:
        return DifferentialStep(change=work.change, capture=capture,
                                unpack=lambda x: self.unpack(x, work.width, work.height),
                                pack=lambda x: self.pack(x, work.width, work.height))

    def run_video(self, job: VideoJob) -> tuple[Any, RunInfo, VideoWork]:
        """One clip edit: uint8 frames (F, H, W, 3) at the work size, or the pipeline's own latent output."""
        if job.request.skip_frozen or job.request.crop:
            raise DiffDiffError("skip_frozen and crop are for images; video edits run on the whole clip")
        work = self.prepare_video(job)
        capture = NoiseCapture(self.pipe.scheduler, self.noise_method)
        hook = self.hook_for_video(work, capture)
        out = run_stage(self.pipe, dict(work.kwargs, output_type=job.output), hook, capture, None, work.info)
        self.record_start(work.info, hook, capture, self.pipe)
        if job.request.output_type == "latent":
            return out, work.info, work
        return self.video_frames(out)[: work.count], work.info, work

    def video_frames(self, out: Any) -> np.ndarray:
        """The pipeline's ``np`` output for one video as uint8 (F, H, W, 3)."""
        arr = to_uint8_images(out)
        return arr[0] if arr.ndim == 5 else arr


# Video pipelines diffdiff cannot drive, and what they lack.
_REFUSED: dict[str, str] = {
    "LTXConditionPipeline": ("no video-to-video noising of its own (denoise_strength acts only on latents passed "
                             "in; video conditions enter through a per-token mask)"),
    "LTXImageToVideoPipeline": "no input video to noise (it animates one image)",
    "LTXPipeline": "no input video (text-to-video)",
    "WanImageToVideoPipeline": "no input video to noise (it animates one image)",
    "WanVACEPipeline": "no strength: it conditions on a control video instead of noising the input",
    "CogVideoXImageToVideoPipeline": "no input video to noise (it animates one image)",
    "HunyuanVideoPipeline": "no video-to-video form with strength",
    "MochiPipeline": "no video-to-video form with strength",
    "StableVideoDiffusionPipeline": "no input video to noise (it animates one image) and no text prompt",
}


class RefusedVideoAdapter(Adapter):
    """Matches video pipelines without a video-to-video ``strength`` and refuses them in one line."""

    name = "refused-video"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in _REFUSED

    def __init__(self, pipe: Any, **parts: Any) -> None:
        from_name = type(pipe).__name__
        raise UnsupportedModelError(
            f"{from_name} cannot be edited with a change map: {_REFUSED[from_name]}; video families: "
            + ", ".join(video_family_names())
        )


#: The video families diffdiff ships (filled by the package as it registers them).
VIDEO_FAMILIES: list[type[VideoAdapter]] = []


def video_family_names() -> list[str]:
    return [f"{a.name} ({', '.join(a.pipeline_classes)})" for a in VIDEO_FAMILIES]


def video_family_for(adapter: Any) -> Optional[VideoAdapter]:
    """``adapter`` when it drives a video pipeline, else None."""
    return adapter if isinstance(adapter, VideoAdapter) else None
