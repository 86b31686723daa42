"""The user-facing :class:`Editor`: load a model, edit an image with a change map.

The editor owns the edit flow: read the image and the map once, build the request's metadata,
take the region crop when asked (:mod:`diffdiff.crop`), hand a :class:`~diffdiff.families.base.Job`
to the model family (:mod:`diffdiff.families`), then post-process (resize back, paste-back of
untouched pixels, metadata). The per-step rule itself lives in :mod:`diffdiff.core`; the tools
(fan, soft-inpainting, DiffEdit) are reached through thin methods here and depend only on
:class:`diffdiff.protocol.EditorLike`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from . import crop, diffedit, fan, softinpaint, videoedit
from .addons import Addons, addons_of, load_addons
from .automap import auto_map
from .changemap import MapLike, Polarity, prepare_change_map, to_latent_map
from .changemap import paste_back as paste_back_pixels
from .compat import mend_pipeline
from .errors import DiffDiffError, DiffDiffWarning, PipelineArgumentError
from .families import Adapter, Job, RunInfo, adapter_for
from .families.base import Trajectory
from .inpaint import as_inpaint_pipeline, is_inpaint_checkpoint
from .io import DEFAULT_MAX_PIXELS, ImageLike, check_pixel_limit, image_sha256, load_image, map_sha256, open_image
from .loading import load_family
from .mapsettings import MAP_ENCODE_STRENGTH, MAP_NUM_MAPS
from .perf import configure_memory
from .pipeinfo import as_img2img, check_call_arguments
from .request import CropResolution, EditRequest, OutputType
from .version import __version__
from .video import DEFAULT_MAX_FRAMES, MapSource, VideoLike

__all__ = ["DEFAULT_MAX_PIXELS", "FEW_STEPS", "DiffDiffWarning", "Editor", "RunInfo", "check_pixel_limit"]

#: Below this many executed steps the map's gradation is visibly coarse.
FEW_STEPS = 10

class Editor:
    """Graded image editing with Differential Diffusion on a diffusers pipeline.

    ``Editor(pipe)`` wraps a pipeline you built; :meth:`from_pretrained` loads one by hub id, local
    folder or single ``.safetensors``/``.ckpt`` file. The model family is detected from the pipeline.
    """

    def __init__(
        self,
        pipe: Any,
        refiner: Any = None,
        refiner_start: float = 0.8,
        model_name: Optional[str] = None,
        refiner_name: Optional[str] = None,
        progress: bool = True,
        prior: Any = None,
        stage_2: Any = None,
        stage_3: Any = None,
    ) -> None:
        self._device: Optional[torch.device] = None
        pipe = as_img2img(pipe)
        if is_inpaint_checkpoint(pipe):  # a 9-channel UNet: its own pipeline feeds the mask input
            pipe = as_inpaint_pipeline(pipe)
        # Extra pipelines of multi-model families: SDXL's refiner, Kandinsky's prior, IF's later stages.
        self.adapter: Adapter = adapter_for(
            pipe, refiner=as_img2img(refiner) if refiner is not None else None,
            prior=prior, stage_2=stage_2, stage_3=stage_3,
        )
        for part in self.adapter.pipelines():
            mend_pipeline(part)  # library version skew (diffdiff.compat)
        if refiner is not None:
            self.refiner_start = refiner_start
        elif not 0 < refiner_start < 1:
            raise DiffDiffError(f"refiner_start must be between 0 and 1, got {refiner_start}")
        name = model_name or getattr(getattr(self.pipe, "config", None), "_name_or_path", None) or type(self.pipe).__name__
        self.model_name = str(name)
        self.adapter.model_name = self.model_name
        self.refiner_name = refiner_name
        #: add-ons on the pipeline (ControlNet, LoRA, IP-Adapter); from_pretrained records what it loaded
        self.addons: Addons = addons_of(self.pipe)
        self.progress = progress
        self.last_run = RunInfo()
        #: the last :meth:`diffedit` run's latents and mask (tests, debugging)
        self.last_diffedit: Optional[diffedit.DiffEditRun] = None
        #: Largest image (in pixels) edit() accepts; None for no limit. Guards against accidental
        #: multi-hundred-megapixel inputs that would exhaust memory hours into a run.
        self.max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
        self.set_progress_bar(progress)

    # construction ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        refiner: str | os.PathLike[str] | None = None,
        refiner_start: float = 0.8,
        device: Optional[str] = None,
        torch_dtype: Any = None,
        progress: bool = True,
        prior: str | os.PathLike[str] | None = None,
        stage_2: str | os.PathLike[str] | None = None,
        stage_3: str | os.PathLike[str] | None = None,
        controlnet: Any = None,
        lora: Any = None,
        ip_adapter: str | os.PathLike[str] | None = None,
        ip_adapter_scale: float = 1.0,
        **kw: Any,
    ) -> Editor:
        """Load ``model`` (hub id, diffusers folder or single-file checkpoint) and detect its family.

        Multi-model families: ``refiner`` is SDXL's refiner; ``prior`` is Kandinsky 2.2's prior
        (default: the hub's 2.2 prior); ``stage_2`` / ``stage_3`` are DeepFloyd IF's
        super-resolution stages (optional).
        Add-ons (:mod:`diffdiff.addons`): ``controlnet`` one ControlNet or a list (folder, file or hub
        id; SD, SDXL and its ControlNet Union, Flux); ``lora`` a list of ``"PATH_OR_ID[:SCALE]"`` (or
        ``(path, scale)``); ``ip_adapter`` an IP-Adapter weights file (its ``image_encoder`` folder
        beside it) at ``ip_adapter_scale``. Inpainting checkpoints (9-channel UNets, Flux Fill) are
        detected and driven through their mask input.
        """
        wanted = {"refiner": refiner, "prior": prior, "stage_2": stage_2, "stage_3": stage_3}
        pipe, parts = load_family(str(model), {k: None if v is None else str(v) for k, v in wanted.items()},
                                  device=device, torch_dtype=torch_dtype, **kw)
        pipe, addons = load_addons(as_img2img(pipe), controlnet=controlnet, lora=lora, ip_adapter=ip_adapter,
                                   ip_adapter_scale=ip_adapter_scale, dtype=torch_dtype)
        editor = cls(pipe, refiner_start=refiner_start, model_name=str(model),
                     refiner_name=str(refiner) if refiner is not None else None, progress=progress, **parts)
        editor.addons = addons
        return editor

    def to(self, device: Any = None, dtype: Any = None) -> Editor:
        """Move the pipeline(s), like ``pipe.to()``."""
        args = [a for a in (device, dtype) if a is not None]
        self._device = None
        self.pipe = self.pipe.to(*args)
        for part in self.adapter.parts.values():  # SDXL refiner, Kandinsky prior, IF stages II/III
            part.to(*args)
        return self

    # the pipeline and its parts -------------------------------------------------------------------
    @property
    def pipe(self) -> Any:
        return self.adapter.pipe

    @pipe.setter
    def pipe(self, value: Any) -> None:
        self.adapter.pipe = value

    @property
    def refiner(self) -> Any:
        return self.adapter.parts.get("refiner")

    @property
    def refiner_start(self) -> float:
        return float(getattr(self.adapter, "refiner_start", 0.8))

    @refiner_start.setter
    def refiner_start(self, value: float) -> None:
        setter = getattr(self.adapter, "set_refiner_start", None)
        if setter is not None:
            setter(value)
        elif not 0 < value < 1:
            raise DiffDiffError(f"refiner_start must be between 0 and 1, got {value}")

    @property
    def device(self) -> torch.device:
        # diffusers' pipe.device walks every module (milliseconds); cache it until to() moves things.
        if self._device is None:
            self._device = self.pipe.device
        return self._device

    @property
    def family(self) -> str:
        return self.adapter.name

    def set_progress_bar(self, enabled: bool) -> None:
        self.progress = enabled
        for p in self.adapter.pipelines():
            if p is not None and hasattr(p, "set_progress_bar_config"):
                p.set_progress_bar_config(disable=not enabled, desc="diffdiff", leave=False)

    # geometry and rules (the family's) ------------------------------------------------------------
    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model runs at: the image's size rounded to the family's pixel multiple."""
        return self.adapter.work_size(width, height)

    def vae_scale(self) -> int:
        return self.adapter.vae_scale()

    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        return self.adapter.planned_steps(num_inference_steps, strength)

    def default_guidance(self) -> Optional[float]:
        return self.adapter.default_guidance()

    # the edit -------------------------------------------------------------------------------------
    def edit(
        self,
        image: ImageLike,
        change_map: MapLike | str | os.PathLike[str],
        prompt: str,
        negative_prompt: Optional[str] = None,
        num_inference_steps: int = 50,
        guidance_scale: Optional[float] = None,
        strength: float = 1.0,
        seed: Optional[int] = None,
        num_images: int = 1,
        polarity: Polarity = "change",
        output_type: OutputType = "pil",
        paste_back: bool = True,
        metadata: Optional[dict[str, Any]] = None,
        crop: bool = False,
        crop_padding: int = 32,
        crop_resolution: CropResolution = None,
        skip_frozen: bool = False,
        pipeline_kwargs: Optional[dict[str, Any]] = None,
        control_image: Any = None,
        control_from: Optional[str] = None,
        controlnet_conditioning_scale: Any = None,
        control_mode: Any = None,
        ip_adapter_image: Any = None,
        reference_images: Any = None,
    ) -> Any:
        """Edit ``image`` where ``change_map`` allows it; returns a list of PIL images.

        ``change_map``: greyscale, 0 = keep, 1 = change fully (up to ``strength``) with
        ``polarity="change"``; white = keep with ``polarity="keep"`` (the authors' maps).
        ``output_type="latent"`` returns the final latents, shape (B, C, h, w).
        ``crop=True`` denoises only the box around map > 0 (plus ``crop_padding`` px) and pastes it back.
        ``skip_frozen=True`` runs the model at each step only where pixels are free by then (box +
        ``crop_padding`` px of context; :mod:`diffdiff.skip`): much less work for small or graded maps.
        ``pipeline_kwargs`` go to the diffusers call as they are (inputs diffdiff does not model).
        With a ControlNet loaded: ``control_image`` (one, or one per ControlNet; the input's aspect
        ratio) or ``control_from="canny"``, ``controlnet_conditioning_scale``; ControlNet Union also
        ``control_mode`` (a name such as ``"depth"``, or its number). With an IP-Adapter: ``ip_adapter_image``.
        Instruction-edit pipelines taking several images (Qwen-Image-Edit-Plus): ``reference_images``
        (one or a list) follow the edited input.
        The parameters form one :class:`~diffdiff.request.EditRequest`; :meth:`edit_with` takes one.
        """
        request = EditRequest(
            prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, strength=strength, seed=seed, num_images=num_images, polarity=polarity,
            output_type=output_type, paste_back=paste_back, crop=crop, crop_padding=crop_padding,
            crop_resolution=crop_resolution, skip_frozen=skip_frozen, pipeline_kwargs=dict(pipeline_kwargs or {}),
            metadata=dict(metadata or {}), control_image=control_image, control_from=control_from,
            controlnet_conditioning_scale=controlnet_conditioning_scale, control_mode=control_mode,
            ip_adapter_image=ip_adapter_image, reference_images=reference_images,
        )
        return self.edit_with(image, change_map, request)

    def edit_with(self, image: ImageLike, change_map: Any, request: EditRequest) -> Any:
        """:meth:`edit` for a request built once (by the CLI, the web API, a tool or a batch).

        The image and the map are read once here, whether or not the edit is cropped.
        """
        img = load_image(image, "image")
        if not request.crop:
            check_pixel_limit(*img.size, self.max_pixels)  # before the map is resized to a huge image
        if isinstance(change_map, (str, os.PathLike)):
            change_map = open_image(change_map, "change map")
        change = prepare_change_map(change_map, img.size, request.polarity)
        request = self.addons.resolve(request.with_seed(), img.size)  # add-on inputs checked and opened once
        meta = self.metadata_for(request, img, map_sha256(change_map))
        source = img if img.mode == "RGB" else img.convert("RGB")  # read only below: no copy needed
        if not request.crop:
            return self._edit(source, change, request, meta)
        # Denoise only the changed region's box (diffdiff.crop), then paste it back into the full image.
        plan = crop.plan(change, request.crop_padding, self.adapter.pixel_multiple(),
                         lambda w, h: crop.upscaled_size(self, w, h, request.crop_resolution))
        if plan is None:
            return self._edit(source, change, request, meta)  # nothing may change: the input comes back
        meta["crop"] = plan.describe(request.crop_padding, request.crop_resolution)
        work, work_change = plan.inputs(source, change)
        check_pixel_limit(*work.size, self.max_pixels)
        return plan.paste(self._edit(work, work_change, request, meta), source, change, request.paste_back)

    def metadata_for(self, request: EditRequest, image: Image.Image, map_hash: str) -> dict[str, Any]:
        """Everything an output records: model, family, the request, input hashes, versions."""
        meta: dict[str, Any] = {
            "model": self.model_name,
            "family": self.adapter.name,
            "refiner": self.refiner_name,
            "refiner_start": self.refiner_start if self.refiner is not None else None,
            **request.metadata_fields(self.adapter.default_guidance()),
            "map_sha256": map_hash,
            "image_sha256": image_sha256(image),
            "scheduler": type(self.pipe.scheduler).__name__,
            "diffdiff_version": __version__,
        }
        meta.update(request.metadata)
        return meta

    def _edit(self, source: Image.Image, change: np.ndarray, request: EditRequest, meta: dict[str, Any]) -> Any:
        """The edit of a prepared RGB source and image-size change array."""
        width, height = source.size
        planned = self.planned_steps(request.num_inference_steps, request.strength)
        if planned == 0 or not np.any(change > 0):
            if request.output_type == "latent":
                raise DiffDiffError("nothing to denoise: strength or the change map is zero everywhere")
            # Nothing may change: the exact input is the exact answer (no model call needed).
            return [_finish(source.copy(), meta, i) for i in range(request.num_images)]
        if planned < FEW_STEPS:
            warnings.warn(
                f"only {planned} denoising steps will run: the change map is quantised to {planned} levels "
                "(use more steps or a higher strength for smoother gradation)",
                DiffDiffWarning,
                stacklevel=3,
            )
        out = self.run(source, change, request)
        if request.output_type == "latent":
            return out
        results = []
        for i, arr in enumerate(out):
            res = Image.fromarray(arr, "RGB")
            reference, ref_change = source, change
            if res.size != (width, height):
                if self.adapter.native_output:
                    # Cascades (IF) end at their own resolution; keep-pixels are exact against the
                    # input resampled to that size.
                    reference = source.resize(res.size, Image.Resampling.LANCZOS)
                    ref_change = to_latent_map(change, res.size[1], res.size[0])[0, 0].numpy()
                else:
                    res = res.resize((width, height), Image.Resampling.LANCZOS)
            if request.paste_back:
                res = paste_back_pixels(res, reference, ref_change)
            results.append(_finish(res, meta, i))
        return results

    def run(self, source: Image.Image, change: np.ndarray, request: EditRequest,
            trajectory: Optional[Trajectory] = None) -> Any:
        """One edit with an image-size change array: uint8 arrays (B, H, W, 3) or latents (B, C, h, w).

        ``request.skip_frozen``: run the denoiser only where pixels are free (:mod:`diffdiff.skip`),
        with ``request.crop_padding`` pixels of context around its box. Not with a custom ``trajectory``.
        """
        # Tiled/sliced VAE above a size (diffdiff.perf); here so fan, soft-inpaint and DiffEdit get it too.
        configure_memory(self, *self.work_size(*source.size))
        with self._caller_inputs(request):
            out, self.last_run = self.adapter.run(Job(source, change, request.with_seed(), trajectory))
        return out

    @contextlib.contextmanager
    def _caller_inputs(self, request: EditRequest) -> Iterator[None]:
        """Around one pipeline run: check the inputs diffdiff passes on unread (``pipeline_kwargs``
        names, ``reference_images``), and report the pipeline failing on them as the caller's input."""
        if request.reference_images and not self.adapter.reference_image:
            raise DiffDiffError(f"reference_images are for instruction-edit pipelines that take several images "
                                f"(Qwen-Image-Edit-Plus); {type(self.pipe).__name__} takes none")
        if not request.pipeline_kwargs and not request.reference_images:
            yield
            return
        check_call_arguments(self.pipe, request.pipeline_kwargs)
        try:
            yield
        except (DiffDiffError, MemoryError):
            raise
        except Exception as exc:  # the pipeline refused a value it was given by name: the caller's input
            given = dict(request.pipeline_kwargs)
            if request.reference_images:
                given["reference_images"] = request.reference_images
            raise PipelineArgumentError(given, exc, "reference_images" if not request.pipeline_kwargs else None) \
                from exc

    # video (logic in videoedit.py / video.py) ----------------------------------------------------
    def edit_video(
        self,
        video: VideoLike,
        change_map: MapSource,
        prompt: str,
        negative_prompt: Optional[str] = None,
        num_inference_steps: int = 50,
        guidance_scale: Optional[float] = None,
        strength: float = 1.0,
        seed: Optional[int] = None,
        polarity: Polarity = "change",
        map_ramp: Optional[tuple[float, float]] = None,
        output_type: OutputType = "pil",
        paste_back: bool = True,
        max_frames: Optional[int] = DEFAULT_MAX_FRAMES,
        metadata: Optional[dict[str, Any]] = None,
        pipeline_kwargs: Optional[dict[str, Any]] = None,
    ) -> Any:
        """Edit a clip (path, list of PIL frames or uint8 array) where its change map allows; returns frames.

        ``change_map``: one map for every frame, a map video of the same length, a folder or list
        of per-frame maps, or None with ``map_ramp`` = (start, end), which scales frame k's map by
        a factor growing linearly from start to end. A latent frame gets the maximum of the maps
        of the frames it packs; frames are pasted back where their own map is 0. Video families only.
        """
        request = EditRequest(
            prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, strength=strength, seed=seed, polarity=polarity, output_type=output_type,
            paste_back=paste_back, pipeline_kwargs=dict(pipeline_kwargs or {}), metadata=dict(metadata or {}),
        )
        with self._caller_inputs(request):
            out, self.last_run = videoedit.edit_video(self.adapter, self.model_name, video, change_map, request,
                                                      map_ramp, max_frames, self.max_pixels)
        return out

    # soft-inpainting and the strength fan (logic in softinpaint.py / fan.py) ----------------------
    def soft_inpaint(self, image: ImageLike, mask: Any, softness: float, prompt: str, **edit_kwargs: Any) -> Any:
        """Regenerate the mask's white hole; the ring (sigma ``softness`` px) adjusts, far pixels stay exact."""
        return softinpaint.soft_inpaint(self, image, mask, softness, prompt, **edit_kwargs)

    def fan(self, image: ImageLike, prompt: str, columns: int = 5, min_strength: float = 0.0,
            max_strength: float = 1.0, change_map: Any = None, **edit_kwargs: Any) -> Any:
        """One image in ``columns`` vertical bands at strengths ``min..max``, made by ONE edit."""
        return fan.fan(self, image, prompt, columns, min_strength, max_strength, change_map, **edit_kwargs)

    # DiffEdit and automatic change maps from text (logic in automap.py / diffedit.py) -------------
    def auto_map(self, image: ImageLike, source_prompt: str, target_prompt: str, num_maps: int = MAP_NUM_MAPS,
                 encode_strength: float = MAP_ENCODE_STRENGTH, seed: Optional[int] = None, **kw: Any) -> Image.Image:
        """Continuous change map (PIL "L", image size) where the two prompts' noise predictions differ."""
        return auto_map(self, image, source_prompt, target_prompt, num_maps=num_maps, encode_strength=encode_strength,
                        seed=seed, **kw)

    def diffedit(self, image: ImageLike, source_prompt: str, target_prompt: str, mask: Any = None,
                 threshold: float = 0.5, encode_ratio: float = 0.5, num_inference_steps: int = 50,
                 seed: Optional[int] = None, **kw: Any) -> Any:
        """DiffEdit: DDIM-invert under the source prompt, decode under the target inside the mask only."""
        out, self.last_diffedit = diffedit.diffedit(self, image, source_prompt, target_prompt, mask, threshold,
                                                    encode_ratio, num_inference_steps, seed, **kw)
        return out


def _finish(img: Image.Image, meta: dict[str, Any], index: int) -> Image.Image:
    img.info["diffdiff"] = dict(meta, index=index)
    return img

