"""Add-ons on a loaded model: inpainting checkpoints, LoRA, ControlNet, IP-Adapter; what each edit records.

:func:`load_addons` turns the pipeline the family loader returned into the one the add-ons need, in
this order: a 9-channel inpainting UNet switches to diffusers' inpainting pipeline
(:mod:`diffdiff.inpaint`); LoRAs are loaded into the shared weights (:mod:`diffdiff.lora`);
ControlNets switch to the family's ControlNet img2img pipeline (:mod:`diffdiff.control`); an
IP-Adapter is loaded last (:mod:`diffdiff.ipadapter`), onto the pipeline that will run. Every
switch is diffusers' ``from_pipe``: the base weights are shared, never copied.

:class:`Addons` remembers what was loaded and, per edit, :meth:`Addons.resolve` checks the
request's add-on inputs against it (a control image without a ControlNet, an unreadable IP-Adapter
image, a control image of another aspect ratio: one line each, before any model work), opens them
once, and adds their metadata: each ControlNet, each LoRA with its scale and file hash, the
IP-Adapter, and the control and reference images' hashes. The families turn the resolved inputs
into call arguments (:func:`diffdiff.addon_inputs.pipeline_inputs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .addon_inputs import (
    as_list,
    check_control_shape,
    check_scales,
    controlnets_of,
    is_union,
    label,
    open_input,
    union_mode,
)
from .control import controlnet_family, controlnet_pipeline, load_controlnet
from .errors import DiffDiffError
from .inpaint import as_inpaint_pipeline, is_inpaint_checkpoint
from .io import image_sha256
from .ipadapter import load_ip_adapter
from .lora import load_loras
from .request import EditRequest

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Addons:
    """What :func:`load_addons` put on the pipeline (empty for a plain model)."""

    controlnets: list[str] = field(default_factory=list)
    #: the ControlNet is a ControlNet Union (SDXL): each call needs a control type
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

    def resolve(self, request: EditRequest, image_size: tuple[int, int]) -> EditRequest:
        """``request`` with its add-on inputs checked and opened, and the add-ons' metadata merged in."""
        given = as_list(request.control_image)
        uses_control = bool(given) or request.control_from is not None or request.controlnet_conditioning_scale is not None
        if uses_control and not self.controlnets:
            raise DiffDiffError("control_image / control_from / controlnet_conditioning_scale need a ControlNet: "
                                "load one with controlnet= (CLI: --controlnet PATH)")
        if request.control_mode is not None and not self.union:
            raise DiffDiffError("control_mode (--control-mode) is only for a ControlNet Union model")
        if request.ip_adapter_image is not None and self.ip_adapter is None:
            raise DiffDiffError("ip_adapter_image needs an IP-Adapter: load one with ip_adapter= (CLI: --ip-adapter FILE)")
        if self.ip_adapter is not None and request.ip_adapter_image is None:
            raise DiffDiffError("an IP-Adapter is loaded: pass ip_adapter_image= (CLI: --ip-adapter-image FILE)")
        meta = self.metadata()
        changes: dict[str, Any] = {}
        if self.controlnets:
            if not given and request.control_from is None:
                raise DiffDiffError("a ControlNet is loaded: pass control_image= (CLI: --control-image FILE) "
                                    "or control_from='canny' (--control-from canny)")
            if request.crop:
                raise DiffDiffError("crop=True (--crop) does not work with a ControlNet yet; edit the full image")
            images = []
            for g in given:
                img = open_input(g, "control image")
                check_control_shape(img, image_size, label(g))
                images.append(img)
            files = [Path(g).name for g in given if isinstance(g, (str, os.PathLike))]
            if files:
                meta["control_image_files"] = files
            if images:
                meta["control_image_sha256"] = [image_sha256(i) for i in images]
                changes["control_image"] = images[0] if len(images) == 1 else images
            if request.control_from is not None:
                meta["control_from"] = request.control_from
            scales = check_scales(request.controlnet_conditioning_scale) or [1.0]
            meta["controlnet_scale"] = scales[0] if len(scales) == 1 else scales
            if self.union:
                meta["control_mode"] = union_mode(request.control_mode, request.control_from)
        if request.ip_adapter_image is not None:
            g = request.ip_adapter_image
            img = open_input(g, "IP-Adapter image")
            meta["ip_adapter_image_sha256"] = image_sha256(img)
            if isinstance(g, (str, os.PathLike)):
                meta["ip_adapter_image_file"] = Path(g).name
            changes["ip_adapter_image"] = img
        if not meta and not changes:
            return request
        return request.replace(**changes, metadata={**meta, **request.metadata})


def addons_of(pipe: Any) -> Addons:
    """What a pipeline built by the caller already carries (``Editor(pipe)``): its ControlNet(s)."""
    nets = controlnets_of(pipe)
    names = [str(getattr(getattr(n, "config", None), "_name_or_path", "") or type(n).__name__) for n in nets]
    return Addons(controlnets=names, union=is_union(nets), inpaint=is_inpaint_checkpoint(pipe))


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
    loras = [lora] if isinstance(lora, str) else as_list(lora)
    if loras:
        addons.loras = load_loras(pipe, loras)
    specs = [str(c) for c in as_list(controlnet)]
    if specs:
        # Check the family first: no ControlNet weights are read for a model that cannot use them.
        family = controlnet_family(pipe, specs[0])[0]
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        nets = [load_controlnet(s, getattr(denoiser, "dtype", dtype), family) for s in specs]
        pipe = controlnet_pipeline(pipe, nets, specs)
        addons.union = is_union(nets)
        addons.controlnets = [Path(s).name if Path(s).exists() else s for s in specs]
    if ip_adapter is not None:
        addons.ip_adapter = load_ip_adapter(pipe, ip_adapter, ip_adapter_scale)
    return pipe, addons

