"""Model families as thin adapters around diffusers img2img pipelines.

An adapter answers four questions for the engine and nothing more:

* does this pipeline belong to the family (``matches``)?
* what pixel multiple and latent grid does it use (``pixel_multiple``, ``latent_hw``)?
* how is the pipeline called for an img2img run (``call_kwargs``) and how does it noise the image
  (``noise_method``: ``add_noise`` or ``scale_noise``)?
* how do its callback latents map to a (B, C, h, w) grid (``unpack``/``pack``; identity for UNets)?

The blend itself is :func:`diffdiff.core.blend`, driven by :class:`diffdiff.hook.DifferentialStep`.
Adding a family means adding a subclass here and registering it in ``ADAPTERS``.

Families whose run is more than one pipeline call keep the blend in the same hook but give the
adapter extra pipelines (``extra_parts``: Kandinsky's ``prior``, IF's ``stage_2``/``stage_3``) and,
for a cascade, a :meth:`Adapter.run` that :meth:`diffdiff.editor.Editor.run` delegates to.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np
import torch
from PIL import Image

from .errors import DiffDiffError, ModelLoadError, UnsupportedModelError
from .numerics import to_uint8_images

if TYPE_CHECKING:
    from .editor import RunInfo

#: Kandinsky 2.2 decoders need this prior unless another is given.
DEFAULT_KANDINSKY_PRIOR = "kandinsky-community/kandinsky-2-2-prior"

# Scheduler classes and model-name fragments of few-step (distilled) models.
_FEW_STEP_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
_FEW_STEP_NAMES = ("turbo", "schnell", "lcm", "lightning", "hyper", "tcd")


class Adapter:
    """Base adapter: a UNet/DiT img2img pipeline with VAE latents on a plain grid."""

    name: ClassVar[str] = "generic"
    #: diffusers classes (by name) this adapter drives
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    noise_method: ClassVar[str] = "add_noise"
    supports_refiner: ClassVar[bool] = False
    #: extra pipelines the family takes (``Editor.from_pretrained`` keywords)
    extra_parts: ClassVar[tuple[str, ...]] = ()
    #: True when results come back at the model's own output size (IF cascades), not the input's.
    native_output: ClassVar[bool] = False
    #: pass the work size as ``height``/``width`` (pipelines that otherwise use a default size)
    pass_size: ClassVar[bool] = False
    #: the family runs its own sequence of pipeline calls (:meth:`run`)
    custom_run: ClassVar[bool] = False

    def __init__(self, pipe: Any, **parts: Any) -> None:
        check_parts(type(self), parts)
        self.pipe = pipe
        self.parts = {k: v for k, v in parts.items() if v is not None}

    def pipelines(self) -> list[Any]:
        """Every pipeline the family uses (for progress bars and device moves)."""
        return [self.pipe, *self.parts.values()]

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes

    # geometry -----------------------------------------------------------------------------------
    def vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    def pixel_multiple(self) -> int:
        """Input sizes are rounded to a multiple of this (pixels)."""
        return self.vae_scale()

    def latent_hw(self, width: int, height: int) -> tuple[int, int]:
        s = self.vae_scale()
        return height // s, width // s

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents

    def pack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents

    # calling --------------------------------------------------------------------------------------
    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        """Denoising steps an img2img run will execute (diffusers' ``get_timesteps`` rule)."""
        return min(int(num_inference_steps * strength), num_inference_steps)

    def default_guidance(self) -> float | None:
        param = call_parameters(self.pipe).get("guidance_scale")
        if param is None or param.default is inspect.Parameter.empty:
            return None
        return float(param.default)

    def call_kwargs(
        self,
        image: Any,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        num_inference_steps: int,
        guidance_scale: float | None,
        strength: float,
        num_images: int,
        generator: torch.Generator,
        width: int,
        height: int,
    ) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            image=image,
            prompt=prompt,
            num_inference_steps=num_inference_steps,
            strength=strength,
            num_images_per_prompt=num_images,
            generator=generator,
        )
        if negative_prompt is not None:
            kw["negative_prompt"] = negative_prompt
        if guidance_scale is not None:
            kw["guidance_scale"] = guidance_scale
        if self.pass_size:
            kw["width"], kw["height"] = width, height
        return self._accepted(kw)

    def _accepted(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Drop arguments the pipeline's ``__call__`` does not take (e.g. negative prompts on Flux)."""
        params = call_parameters(self.pipe)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return kw
        return {k: v for k, v in kw.items() if k in params}

    def latents_from_output(self, images: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Pipeline ``output_type="latent"`` result as (B, C, h, w)."""
        return self.unpack(images, width, height)

    # few-step models ------------------------------------------------------------------------------
    def is_few_step(self, model_name: Optional[str] = None) -> bool:
        """A distilled few-step model (LCM, Turbo, schnell, Lightning, Hyper, TCD)."""
        if type(self.pipe.scheduler).__name__ in _FEW_STEP_SCHEDULERS:
            return True
        name = (model_name or getattr(getattr(self.pipe, "config", None), "_name_or_path", "") or "").lower()
        return any(part in name for part in _FEW_STEP_NAMES)

    # cascades -------------------------------------------------------------------------------------
    def run(
        self,
        source: Image.Image,
        change: np.ndarray,
        prompt: str | list[str],
        negative_prompt: Optional[str],
        num_inference_steps: int,
        guidance_scale: Optional[float],
        strength: float,
        seed: int,
        num_images: int,
        output_type: str,
        trajectory: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
        skip_frozen: bool = False,
        context_px: int = 32,
    ) -> tuple[Any, RunInfo]:
        """A family's own run flow (only when ``custom_run``); returns (output, run info)."""
        raise NotImplementedError


class StableDiffusionAdapter(Adapter):
    name = "sd"
    pipeline_classes = ("StableDiffusionImg2ImgPipeline",)


class StableDiffusionXLAdapter(Adapter):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLImg2ImgPipeline",)
    supports_refiner = True


def round_to_levels(change: torch.Tensor, total_steps: int) -> torch.Tensor:
    """Snap a change map so each pixel follows the model for ``round(m * N)`` of the N steps.

    :mod:`diffdiff.core` quantises a value m to a whole number of followed steps (ceil(m * N) with
    its strict threshold), so with the 1-4 steps of Turbo, schnell or LCM a value of 0.3 behaves
    like 0.5 at N = 4. Nearest-level rounding halves the worst error and removes the bias. Each
    level j is replaced by a value that :func:`diffdiff.core.quantised_levels` itself maps to
    exactly j steps, so this stays right whatever the threshold's direction. Zeros stay zero.
    """
    from .core import quantised_levels

    if total_steps <= 0:
        return change
    table = torch.zeros(total_steps + 1, dtype=change.dtype, device=change.device)
    for j in range(1, total_steps + 1):
        candidates = torch.tensor([j / total_steps, (j - 0.5) / total_steps, min(1.0, (j + 0.5) / total_steps)],
                                  dtype=change.dtype, device=change.device)
        ok = (quantised_levels(candidates, total_steps) == j).nonzero().flatten()
        table[j] = candidates[int(ok[0])] if len(ok) else j / total_steps
    levels = torch.floor(change * total_steps + 0.5).clamp(0, total_steps).long()
    return table[levels]


def _flow_planned_steps(num_inference_steps: int, strength: float) -> int:
    # SD3/Flux truncate with a float product (so 10 * 0.7 runs 8 steps, not 7): mirror it exactly.
    init = min(num_inference_steps * strength, num_inference_steps)
    return num_inference_steps - int(max(num_inference_steps - init, 0))


class StableDiffusion3Adapter(Adapter):
    """SD3 / SD3.5: MMDiT on 16-channel latents, flow matching (``scale_noise``), patch size 2."""

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Img2ImgPipeline",)
    noise_method = "scale_noise"
    pass_size = True  # the pipeline ignores the input size and would run at its default 1024 px

    def pixel_multiple(self) -> int:
        return self.vae_scale() * int(self.pipe.transformer.config.patch_size)

    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        return _flow_planned_steps(num_inference_steps, strength)


class FluxAdapter(Adapter):
    """Flux.1 dev/schnell: flow matching on 2x2-packed latents (sequence of 64-dim tokens)."""

    name = "flux"
    pipeline_classes = ("FluxImg2ImgPipeline",)
    noise_method = "scale_noise"
    pass_size = True

    def pixel_multiple(self) -> int:
        return self.vae_scale() * 2  # the latent grid is packed in 2x2 patches

    def latent_hw(self, width: int, height: int) -> tuple[int, int]:
        s = self.vae_scale() * 2
        return 2 * (height // s), 2 * (width // s)

    def unpack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        if latents.ndim == 4:
            return latents
        return self.pipe._unpack_latents(latents, height, width, self.vae_scale())

    def pack(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def planned_steps(self, num_inference_steps: int, strength: float) -> int:
        return _flow_planned_steps(num_inference_steps, strength)


class KandinskyAdapter(Adapter):
    """Kandinsky 2.2: the prior turns the prompts into image embeddings; the map acts on MoVQ latents.

    Accepts the decoder (img2img or text-to-image) with ``prior=``, or diffusers' combined
    img2img pipeline (its own prior is used).
    """

    name = "kandinsky2.2"
    pipeline_classes = ("KandinskyV22Img2ImgPipeline", "KandinskyV22Pipeline", "KandinskyV22Img2ImgCombinedPipeline",
                        "KandinskyV22CombinedPipeline")
    extra_parts = ("prior",)
    pass_size = True
    #: prior settings, as in diffusers' combined pipeline
    prior_steps: int = 25
    prior_guidance: float = 4.0

    def __init__(self, pipe: Any, **parts: Any) -> None:
        from diffusers import KandinskyV22Img2ImgPipeline

        prior = parts.get("prior")
        if hasattr(pipe, "decoder_pipe"):  # combined pipeline: split it into its two halves
            prior = prior if prior is not None else pipe.prior_pipe
            pipe = pipe.decoder_pipe
        if type(pipe).__name__ != "KandinskyV22Img2ImgPipeline":
            pipe = KandinskyV22Img2ImgPipeline(**pipe.components)  # same weights, img2img call
        if prior is None:
            raise DiffDiffError(
                f"Kandinsky 2.2 needs its prior: pass prior= (e.g. '{DEFAULT_KANDINSKY_PRIOR}')"
            )
        if type(prior).__name__ != "KandinskyV22PriorPipeline":
            raise DiffDiffError(f"the Kandinsky prior must be a KandinskyV22PriorPipeline, got {type(prior).__name__}")
        super().__init__(pipe, prior=prior)
        self.prior = prior

    def vae_scale(self) -> int:
        return 2 ** (len(self.pipe.movq.config.block_out_channels) - 1)

    def call_kwargs(
        self,
        image: Any,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        num_inference_steps: int,
        guidance_scale: float | None,
        strength: float,
        num_images: int,
        generator: torch.Generator,
        width: int,
        height: int,
    ) -> dict[str, Any]:
        # The prior draws from the same generator first, exactly as the combined pipeline does.
        embeds, negative = self.prior(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images,
            num_inference_steps=self.prior_steps, generator=generator, guidance_scale=self.prior_guidance,
            output_type="pt", return_dict=False,
        )
        kw: dict[str, Any] = dict(
            image=[image] * int(embeds.shape[0]), image_embeds=embeds, negative_image_embeds=negative,
            width=width, height=height, strength=strength, num_inference_steps=num_inference_steps,
            generator=generator,
        )
        if guidance_scale is not None:
            kw["guidance_scale"] = guidance_scale
        return kw


def _if_size(size: tuple[int, int], sample_size: int) -> tuple[int, int]:
    """The (width, height) IF resizes an image to: short side ``sample_size``, long side a multiple of 8."""
    w, h = size
    coef = w / h
    if coef >= 1:
        return int(round(sample_size / 8 * coef) * 8), sample_size
    return sample_size, int(round(sample_size / 8 / coef) * 8)


def _legacy_callback(pipe: Any, hook: Any) -> Callable[[int, Any, torch.Tensor], None]:
    """IF pipelines only have the old ``callback(i, t, x)``: apply the hook and write back in place."""

    def callback(i: int, t: Any, images: torch.Tensor) -> None:
        out = hook(pipe, i, t, {"latents": images})["latents"]
        if out is not images:
            images.copy_(out)

    return callback


def _expand(prompt: str | list[str] | None, num_images: int, n_prompts: int) -> list[str] | None:
    """Per-image prompts in the order diffusers batches them (prompt-major, images repeated)."""
    if prompt is None:
        return None
    prompts = [prompt] * n_prompts if isinstance(prompt, str) else list(prompt)
    return [p for p in prompts for _ in range(num_images)]


class DeepFloydIFAdapter(Adapter):
    """DeepFloyd IF: a pixel-space cascade (stage I 64 px, stage II 256 px, optional x4 stage III).

    The map acts at each map-driven stage's own resolution; stage II starts from the original at its
    size, conditioned on the stage-I result. Stage III (an upscaler) is map-free.
    """

    name = "deepfloyd-if"
    pipeline_classes = ("IFImg2ImgPipeline", "IFPipeline")
    extra_parts = ("stage_2", "stage_3")
    custom_run = True
    native_output = True  # stage I alone gives 64 px, stage II 256 px, stage III x4
    noise_level_2: int = 250  # low-res condition noise for stage II (diffusers' default)
    noise_level_3: int = 100  # for the x4 upscaler (DeepFloyd's recommendation)

    def __init__(self, pipe: Any, **parts: Any) -> None:
        from diffusers import IFImg2ImgPipeline, IFImg2ImgSuperResolutionPipeline

        check_parts(type(self), parts)
        if type(pipe).__name__ != "IFImg2ImgPipeline":
            pipe = IFImg2ImgPipeline(**pipe.components)
        stage_2, stage_3 = parts.get("stage_2"), parts.get("stage_3")
        if stage_2 is not None and type(stage_2).__name__ != "IFImg2ImgSuperResolutionPipeline":
            if "image_noising_scheduler" not in getattr(stage_2, "components", {}):
                raise DiffDiffError(f"stage_2 must be a DeepFloyd IF stage II model, got {type(stage_2).__name__}")
            stage_2 = IFImg2ImgSuperResolutionPipeline(**stage_2.components)
        if stage_3 is not None and not {"image", "prompt"} <= call_parameter_names(stage_3):
            raise DiffDiffError(f"stage_3 must be an upscaler taking prompt and image, got {type(stage_3).__name__}")
        super().__init__(pipe, stage_2=stage_2, stage_3=stage_3)
        self.stage_2, self.stage_3 = stage_2, stage_3

    def vae_scale(self) -> int:
        return 1  # pixel space

    def default_guidance(self) -> float | None:
        return 7.0

    def run(
        self,
        source: Image.Image,
        change: np.ndarray,
        prompt: str | list[str],
        negative_prompt: Optional[str],
        num_inference_steps: int,
        guidance_scale: Optional[float],
        strength: float,
        seed: int,
        num_images: int,
        output_type: str,
        trajectory: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
        skip_frozen: bool = False,
        context_px: int = 32,
    ) -> tuple[Any, RunInfo]:
        from diffusers.utils import is_bs4_available, is_ftfy_available

        from .changemap import to_latent_map
        from .editor import RunInfo
        from .hook import DifferentialStep, NoiseCapture
        from .skip import frozen_skip

        if trajectory is not None and self.stage_2 is not None:
            raise DiffDiffError("custom trajectories work with IF stage I only; load it without stage_2")
        generator = torch.Generator().manual_seed(int(seed))
        # Caption cleaning needs bs4 + ftfy; without them diffusers warns and skips it anyway.
        clean = bool(is_bs4_available() and is_ftfy_available())
        info = RunInfo()
        map_stages = [self.pipe] + ([self.stage_2] if self.stage_2 is not None else [])
        last_map_stage = map_stages[-1]
        images: Any = None
        for index, stage in enumerate(map_stages):
            w, h = _if_size(source.size, int(stage.unet.config.sample_size))
            capture = NoiseCapture(stage.scheduler, "add_noise")
            # The hook moves the map to the images' device itself (pipe.device walks every module).
            hook = DifferentialStep(change=to_latent_map(change, h, w), capture=capture,
                                    trajectory=trajectory if index == 0 else None)
            final = stage is last_map_stage and self.stage_3 is None and output_type != "latent"
            # DeepFloyd's recommended guidance: 7 for stage I, 4 for stage II, unless the user sets one.
            guidance = guidance_scale if guidance_scale is not None else (7.0 if index == 0 else 4.0)
            kw: dict[str, Any] = dict(
                strength=strength, num_inference_steps=num_inference_steps, generator=generator,
                guidance_scale=guidance, clean_caption=clean, callback=_legacy_callback(stage, hook),
                callback_steps=1, output_type="np" if final else "pt",  # np runs the safety checker
            )
            if index == 0:
                kw.update(prompt=prompt, negative_prompt=negative_prompt, image=source,
                          num_images_per_prompt=num_images)
            else:
                n = len(prompt) if isinstance(prompt, list) else 1
                prompts = _expand(prompt, num_images, n)
                kw.update(prompt=prompts, negative_prompt=_expand(negative_prompt, num_images, n), image=images,
                          original_image=[source] * len(prompts or []), noise_level=self.noise_level_2)
            skip = frozen_skip(stage, hook, self.planned_steps(num_inference_steps, strength), self.noise_method,
                               context_px, w, source.size[0]) if skip_frozen and trajectory is None else None
            with torch.inference_mode(), capture, skip or contextlib.nullcontext():
                images = stage(**kw).images
            if skip is not None:
                info.denoised_fractions += skip.fractions
            info.pipeline_calls += 1
            info.records += hook.records
            info.work_size = (w, h)
            if index == 0:
                info.reference = capture.reference
                info.total_steps = hook.total_steps(stage.scheduler) if hook.start is not None else 0
        if output_type == "latent":
            return images, info  # pixel space: the last map-driven stage's image in [-1, 1]
        if self.stage_3 is not None:
            n = len(prompt) if isinstance(prompt, list) else 1
            up_kw: dict[str, Any] = dict(
                prompt=_expand(prompt, num_images, n), negative_prompt=_expand(negative_prompt, num_images, n),
                image=images, num_inference_steps=num_inference_steps, generator=generator, output_type="np",
                noise_level=self.noise_level_3,
            )
            params = call_parameter_names(self.stage_3)
            with torch.inference_mode():
                images = self.stage_3(**{k: v for k, v in up_kw.items() if k in params and v is not None}).images
            info.pipeline_calls += 1
            info.work_size = (int(images.shape[2]), int(images.shape[1]))
        return to_uint8_images(images), info


class GenericAdapter(Adapter):
    """Any other diffusers img2img pipeline whose per-step callback exposes standard ``latents``.

    Accepted when the pipeline takes ``image``, ``strength`` and ``callback_on_step_end``, lists
    ``latents`` among its callback tensors, and has a scheduler with ``add_noise`` (or, for flow
    matching, ``scale_noise``). The work size is passed as ``height``/``width`` where accepted.
    """

    name = "generic"
    pass_size = True

    def __init__(self, pipe: Any, **parts: Any) -> None:
        super().__init__(pipe, **parts)
        if not hasattr(pipe.scheduler, "add_noise"):
            self.noise_method = "scale_noise"  # type: ignore[misc]  # a flow-matching scheduler

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        params = call_parameter_names(pipe)
        scheduler = getattr(pipe, "scheduler", None)
        return (
            {"image", "strength", "callback_on_step_end"} <= params
            and "latents" in getattr(pipe, "_callback_tensor_inputs", [])
            and (hasattr(scheduler, "add_noise") or hasattr(scheduler, "scale_noise"))
            and hasattr(pipe, "vae")
        )


# inspect.signature costs about 0.1 ms and was taken several times per edit: cache it per class.
_CALL_PARAMETERS: dict[Any, Mapping[str, inspect.Parameter]] = {}


def call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of ``pipe.__call__`` (``inspect.signature``), cached per pipeline class.

    The key is the class's ``__call__`` itself, so a class whose ``__call__`` is replaced is read
    again; a ``__call__`` set on the instance is never cached.
    """
    if "__call__" in getattr(pipe, "__dict__", {}):
        return inspect.signature(pipe.__call__).parameters
    key = type(pipe).__call__
    try:
        return _CALL_PARAMETERS[key]
    except (KeyError, TypeError):  # TypeError: an unhashable __call__ (never cached)
        params = inspect.signature(pipe.__call__).parameters
    try:
        _CALL_PARAMETERS[key] = params
    except TypeError:
        pass
    return params


def call_parameter_names(pipe: Any) -> set[str]:
    """Names ``pipe.__call__`` accepts (empty when it has no readable signature)."""
    try:
        return set(call_parameters(pipe))
    except (TypeError, ValueError):
        return set()


#: Families tried in order; the generic adapter comes last.
ADAPTERS: list[type[Adapter]] = [
    StableDiffusionAdapter, StableDiffusionXLAdapter, StableDiffusion3Adapter, FluxAdapter, KandinskyAdapter,
    DeepFloydIFAdapter,
]


def register_adapter(adapter: type[Adapter], first: bool = True) -> None:
    """Add a model family (placed before the existing ones so it wins over the generic fallback)."""
    if adapter in ADAPTERS:
        return
    if first:
        ADAPTERS.insert(0, adapter)
    else:
        ADAPTERS.append(adapter)


def supported_families() -> list[str]:
    return [a.name for a in ADAPTERS] + [GenericAdapter.name]


def _part_option(name: str) -> str:
    return f"{name}= (--{name.replace('_', '-')})"


def check_parts(cls: type[Adapter], parts: dict[str, Any]) -> None:
    """Reject extra pipelines a family does not use (e.g. a prior for SDXL) with one clear line."""
    for name, value in parts.items():
        if value is None or name in cls.extra_parts:
            continue
        owners = [a.name for a in ADAPTERS if name in a.extra_parts]
        raise DiffDiffError(
            f"{_part_option(name)} is only for the {' / '.join(owners) or 'no'} family, not {cls.name}"
        )


def adapter_class(pipe: Any) -> type[Adapter]:
    """The family adapter class for ``pipe``; raises :class:`UnsupportedModelError` listing the families."""
    for cls in ADAPTERS:
        if cls.matches(pipe):
            return cls
    if GenericAdapter.matches(pipe):
        return GenericAdapter
    raise UnsupportedModelError(
        f"{type(pipe).__name__} is not a supported model family; supported: "
        + ", ".join(supported_families())
        + " (any diffusers img2img pipeline whose step callback exposes 'latents')"
    )


def adapter_for(pipe: Any, **parts: Any) -> Adapter:
    """The family adapter driving ``pipe`` (plus its extra pipelines: ``prior``, ``stage_2``, ``stage_3``)."""
    return adapter_class(pipe)(pipe, **parts)


# loading the extra pipelines ------------------------------------------------------------------------

_KANDINSKY_DECODERS = ("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline")


def _model_index(model: str) -> Optional[dict[str, Any]]:
    """The model_index.json of a local folder or an already-cached hub model (no network)."""
    path = Path(model).expanduser()
    index = path / "model_index.json"
    if not index.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model), "model_index.json")
        except Exception:  # not a valid repo id
            return None
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    try:
        return json.loads(index.read_text())
    except (OSError, ValueError):
        return None


def load_as(cls: Any, model: str, device: Optional[str], torch_dtype: Any, **kw: Any) -> Any:
    """Load ``model`` (folder or hub id) as pipeline class ``cls`` with diffdiff's one-line errors."""
    from .loading import _friendly, dtype_kwargs, hub_reachable, resolve_device_dtype

    device, dtype = resolve_device_dtype(device, torch_dtype)
    model = str(model)
    path = Path(model).expanduser()
    index = _model_index(model) or {}
    # Optional components saved as null (no safety checker, watermarker...) must be passed as None.
    for name, value in index.items():
        if isinstance(value, list) and value[:1] == [None] and name not in kw:
            kw[name] = None
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"'{model}' is not a diffusers model folder (no model_index.json)")
            pipe = cls.from_pretrained(str(path), **dtype_kwargs(dtype), **kw)
        elif path.exists() or model.startswith((".", "/", "~")):
            raise ModelLoadError(f"model path '{model}' does not exist or is not a diffusers folder")
        else:
            try:
                pipe = cls.from_pretrained(model, **dtype_kwargs(dtype), local_files_only=True, **kw)
            except Exception as exc:
                if not hub_reachable():
                    raise ModelLoadError(
                        f"model '{model}' is not in the local cache and the hub cannot be reached; "
                        "run once with network access or pass a local path"
                    ) from exc
                pipe = cls.from_pretrained(model, **dtype_kwargs(dtype), **kw)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _friendly(model, exc) from exc
    return pipe.to(device)


def load_family(
    model: str,
    prior: Optional[str] = None,
    stage_2: Optional[str] = None,
    stage_3: Optional[str] = None,
    device: Optional[str] = None,
    torch_dtype: Any = None,
    **kw: Any,
) -> tuple[Any, dict[str, Any]]:
    """Load a model and the extra pipelines its family needs; returns (pipe, parts for the adapter)."""
    import diffusers

    from .loading import load_pipeline

    index = _model_index(str(model)) or {}
    if index.get("_class_name") in _KANDINSKY_DECODERS:
        # AutoPipeline would want the prior inside the decoder's repository: load the halves apart.
        pipe = load_as(diffusers.KandinskyV22Img2ImgPipeline, str(model), device, torch_dtype, **kw)
    else:
        try:
            pipe = load_pipeline(model, device=device, torch_dtype=torch_dtype, **kw)
        except ModelLoadError:
            if not index.get("_class_name"):
                raise
            # A real diffusers model with no img2img form: say which families are supported instead.
            adapter_class(_img2img_sibling(load_as(diffusers.DiffusionPipeline, str(model), device, torch_dtype)))
            raise
    cls = adapter_class(_img2img_sibling(pipe))
    wanted = {"prior": prior, "stage_2": stage_2, "stage_3": stage_3}
    check_parts(cls, wanted)
    parts: dict[str, Any] = {}
    if cls is KandinskyAdapter and not hasattr(pipe, "prior_pipe"):
        parts["prior"] = load_as(diffusers.KandinskyV22PriorPipeline, prior or DEFAULT_KANDINSKY_PRIOR, device,
                                 torch_dtype)
    elif prior is not None:
        parts["prior"] = load_as(diffusers.KandinskyV22PriorPipeline, prior, device, torch_dtype)
    if stage_2 is not None:
        # Stage II uses the same T5 as stage I: share it instead of loading a second copy.
        shared = {k: getattr(pipe, k) for k in ("text_encoder", "tokenizer") if getattr(pipe, k, None) is not None}
        parts["stage_2"] = load_as(diffusers.IFImg2ImgSuperResolutionPipeline, stage_2, device, torch_dtype, **shared)
    if stage_3 is not None:
        parts["stage_3"] = load_as(diffusers.DiffusionPipeline, stage_3, device, torch_dtype)
    return pipe, parts


def _img2img_sibling(pipe: Any) -> Any:
    from .editor import _as_img2img

    return _as_img2img(pipe)
