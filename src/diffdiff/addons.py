"""Add-ons on a loaded model, loaded once and fed per edit: inpainting checkpoints, LoRA, ControlNet, IP-Adapter.

:func:`load_addons` turns the pipeline the family loader returned into the one the add-ons need, in
this order: a 9-channel inpainting UNet switches to diffusers' inpainting pipeline
(:mod:`diffdiff.inpaint`); LoRAs are loaded into the shared weights (:mod:`diffdiff.lora`); ControlNets
switch to the family's ControlNet img2img pipeline (:mod:`diffdiff.control`); an IP-Adapter is
loaded last (:mod:`diffdiff.ipadapter`), onto the pipeline that will run. Every switch is diffusers'
``from_pipe``: the base weights are shared, never copied.

:class:`Addons` remembers what was loaded (for the PNG metadata) and builds the per-edit pipeline
inputs (:meth:`Addons.call_inputs`): the control images at the work size, their scales, the
IP-Adapter image. Their metadata -- each ControlNet, each LoRA with its scale and file hash, the
IP-Adapter, the control and reference images' hashes -- goes into every result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from PIL import Image

from .control import (
    ControlLike,
    control_images,
    control_scales,
    controlnet_family,
    controlnet_pipeline,
    load_controlnet,
    union_mode,
)
from .errors import DiffDiffError
from .inpaint import as_inpaint_pipeline, is_inpaint_checkpoint
from .ipadapter import ImageLike, load_ip_adapter, open_ip_image
from .lora import load_loras

PathLike = Union[str, "os.PathLike[str]"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@dataclass
class Addons:
    """What :func:`load_addons` put on the pipeline (empty for a plain model)."""

    controlnets: list[str] = field(default_factory=list)
    #: the ControlNet is a ControlNet Union (SDXL): the call needs a control type
    union: bool = False
    loras: list[dict[str, Any]] = field(default_factory=list)
    ip_adapter: Optional[dict[str, Any]] = None
    inpaint: bool = False

    def metadata(self) -> dict[str, Any]:
        """The load-time part of the PNG metadata (only the add-ons in use)."""
        meta: dict[str, Any] = {}
        if self.inpaint:
            meta["inpaint_checkpoint"] = True
        if self.controlnets:
            meta["controlnet"] = list(self.controlnets)
        if self.loras:
            meta["lora"] = [dict(r) for r in self.loras]
        if self.ip_adapter:
            meta["ip_adapter"] = dict(self.ip_adapter)
        return meta

    def check_inputs(self, control_image: Any = None, control_from: Optional[str] = None, controlnet_scale: Any = None,
                     ip_adapter_image: Any = None, control_mode: Any = None) -> None:
        """Refuse per-edit inputs for add-ons that are not loaded, before any work is done."""
        if control_mode is not None and not self.union:
            raise DiffDiffError("control_mode (--control-mode) is only for a ControlNet Union model")
        if not self.controlnets and (control_image is not None or control_from is not None or controlnet_scale is not None):
            raise DiffDiffError("control_image / control_from / controlnet_conditioning_scale need a ControlNet: "
                                "load one with controlnet= (CLI: --controlnet PATH)")
        if self.controlnets and control_image is None and control_from is None:
            raise DiffDiffError("a ControlNet is loaded: pass control_image= (CLI: --control-image FILE) "
                                "or control_from='canny' (--control-from canny)")
        if self.ip_adapter is None and ip_adapter_image is not None:
            raise DiffDiffError("ip_adapter_image needs an IP-Adapter: load one with ip_adapter= (CLI: --ip-adapter FILE)")
        if self.ip_adapter is not None and ip_adapter_image is None:
            raise DiffDiffError("an IP-Adapter is loaded: pass ip_adapter_image= (CLI: --ip-adapter-image FILE)")
        if controlnet_scale is not None:
            control_scales(controlnet_scale, len(self.controlnets))

    def call_inputs(
        self,
        work: Image.Image,
        source_size: tuple[int, int],
        control_image: Union[ControlLike, list[ControlLike], None] = None,
        control_from: Optional[str] = None,
        controlnet_scale: Union[float, list[float], None] = None,
        ip_adapter_image: Optional[ImageLike] = None,
        control_mode: Union[int, str, None] = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Extra pipeline-call arguments for one edit (``work`` is the input at the work size), and metadata."""
        self.check_inputs(control_image, control_from, controlnet_scale, ip_adapter_image, control_mode)
        kwargs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        if self.controlnets:
            images, control_meta = control_images(control_image, control_from, len(self.controlnets), work, source_size)
            scale = control_scales(controlnet_scale, len(self.controlnets))
            kwargs["control_image"] = images[0] if len(images) == 1 else images
            kwargs["controlnet_conditioning_scale"] = scale
            meta.update(control_meta, controlnet_scale=scale)
            if self.union:
                mode = union_mode(control_mode, control_from)
                kwargs["control_image"], kwargs["control_mode"] = list(images), [mode] * len(images)
                meta["control_mode"] = mode
        if self.ip_adapter is not None:
            img, ip_meta = open_ip_image(ip_adapter_image)  # type: ignore[arg-type]
            kwargs["ip_adapter_image"] = img
            meta.update(ip_meta)
        return kwargs, meta


def addons_of(pipe: Any) -> Addons:
    """What a pipeline built by the caller already carries (``Editor(pipe)``): its ControlNet(s)."""
    net = getattr(pipe, "controlnet", None)
    if net is None:
        return Addons(inpaint=is_inpaint_checkpoint(pipe))
    nets = list(getattr(net, "nets", [net]))
    names = [str(getattr(getattr(n, "config", None), "_name_or_path", "") or type(n).__name__) for n in nets]
    union = any(type(n).__name__ == "ControlNetUnionModel" for n in nets)
    return Addons(controlnets=names, union=union, inpaint=is_inpaint_checkpoint(pipe))


def load_addons(
    pipe: Any,
    controlnet: Union[PathLike, list[PathLike], None] = None,
    lora: Union[str, list[Any], None] = None,
    ip_adapter: Optional[PathLike] = None,
    ip_adapter_scale: float = 1.0,
    dtype: Any = None,
) -> tuple[Any, Addons]:
    """Put the requested add-ons on ``pipe`` (see the module docstring); returns (pipeline, what was loaded)."""
    addons = Addons()
    if is_inpaint_checkpoint(pipe):
        pipe = as_inpaint_pipeline(pipe)
        addons.inpaint = True
    loras = [lora] if isinstance(lora, str) else _as_list(lora)
    if loras:
        addons.loras = load_loras(pipe, loras)
    specs = [str(c) for c in _as_list(controlnet)]
    if specs:
        # Check the family first: no ControlNet weights are read for a model that cannot use them.
        controlnet_family(pipe, specs[0])
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        nets = [load_controlnet(s, getattr(denoiser, "dtype", dtype)) for s in specs]
        pipe = controlnet_pipeline(pipe, nets, specs)
        addons.union = any(type(n).__name__ == "ControlNetUnionModel" for n in nets)
        addons.controlnets = [os.path.basename(os.path.normpath(s)) if os.path.exists(s) else s for s in specs]
    if ip_adapter is not None:
        addons.ip_adapter = load_ip_adapter(pipe, ip_adapter, ip_adapter_scale)
    return pipe, addons
