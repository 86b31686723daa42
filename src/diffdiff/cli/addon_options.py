"""The add-on options of the editing commands, declared once: ``edit``, ``fan`` and ``soft-inpaint``.

Owns the option list (``--controlnet``, ``--control-image``, ``--control-scale``, ``--control-from``,
``--control-mode``, ``--lora``, ``--ip-adapter``, ``--ip-adapter-image``, ``--ip-adapter-scale``),
the :func:`addon_options` decorator that gives a command those options (its ``addons`` parameter
receives them as one :class:`AddonOptions`), the checks run before any model is loaded, and their
conversion into ``Editor.from_pretrained`` keywords (:meth:`AddonOptions.load_kw`) and
:class:`~diffdiff.request.EditRequest` fields (:meth:`AddonOptions.request_kw`). Checking the
inputs against the loaded model, and the PNG metadata records, stay with :mod:`diffdiff.addons`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import typer

#: The ``--help`` panel the add-on options are listed under.
PANEL = "Add-ons: ControlNet, LoRA, IP-Adapter"

#: (parameter name, type, typer option) of each add-on option, in ``--help`` order.
OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("controlnet", Optional[list[str]], typer.Option(
        None, "--controlnet", metavar="PATH_OR_ID", rich_help_panel=PANEL,
        help="ControlNet (folder, .safetensors or hub id; SD, SDXL and its ControlNet Union, Flux). Repeat for several.")),
    ("control_image", Optional[list[Path]], typer.Option(
        None, "--control-image", metavar="FILE", rich_help_panel=PANEL,
        help="Control image (same aspect ratio as IMAGE); one, or one per --controlnet.")),
    ("control_scale", Optional[list[float]], typer.Option(
        None, "--control-scale", metavar="SCALE", rich_help_panel=PANEL,
        help="ControlNet conditioning scale (default 1.0); one, or one per --controlnet.")),
    ("control_from", Optional[str], typer.Option(
        None, "--control-from", metavar="canny", rich_help_panel=PANEL,
        help="Derive the control image from IMAGE instead: 'canny' (OpenCV Canny edges).")),
    ("control_mode", Optional[str], typer.Option(
        None, "--control-mode", metavar="MODE", rich_help_panel=PANEL,
        help="ControlNet Union only: control type (openpose, depth, scribble, canny, normal, segment; "
             "ProMax also tile, repaint; or its number).")),
    ("lora", Optional[list[str]], typer.Option(
        None, "--lora", metavar="SPEC", rich_help_panel=PANEL,
        help="LoRA weights PATH_OR_ID[:SCALE] (diffusers, Kohya or A1111 file). Repeat for several.")),
    ("ip_adapter", Optional[str], typer.Option(
        None, "--ip-adapter", metavar="FILE", rich_help_panel=PANEL,
        help="IP-Adapter weights file (its image_encoder folder beside it) or OWNER/REPO/SUBFOLDER/FILE.")),
    ("ip_adapter_image", Optional[Path], typer.Option(
        None, "--ip-adapter-image", metavar="FILE", rich_help_panel=PANEL, help="Reference image for the IP-Adapter.")),
    ("ip_adapter_scale", float, typer.Option(
        1.0, "--ip-adapter-scale", metavar="SCALE", rich_help_panel=PANEL, help="IP-Adapter strength (0 = off).")),
)


@dataclass(frozen=True)
class AddonOptions:
    """The add-on options of one command line (none given: no add-on)."""

    controlnet: Optional[list[str]] = None
    control_image: Optional[list[Path]] = None
    control_scale: Optional[list[float]] = None
    control_from: Optional[str] = None
    control_mode: Optional[str] = None
    lora: Optional[list[str]] = None
    ip_adapter: Optional[str] = None
    ip_adapter_image: Optional[Path] = None
    ip_adapter_scale: float = 1.0

    def check(self, size: tuple[int, int]) -> None:
        """Refuse inputs without their add-on (and the reverse), unreadable files and control images of
        another aspect ratio than the input (``size``), before any model is loaded."""
        from ..addon_inputs import check_control_shape, label
        from ..errors import DiffDiffError
        from ..io import open_image

        control = self.control_image or self.control_from
        if control and not self.controlnet:
            raise DiffDiffError("--control-image / --control-from need a ControlNet: add --controlnet PATH")
        if self.controlnet and not control:
            raise DiffDiffError("--controlnet needs a control image: add --control-image FILE or --control-from canny")
        if self.ip_adapter and self.ip_adapter_image is None:
            raise DiffDiffError("--ip-adapter needs a reference image: add --ip-adapter-image FILE")
        for path in self.control_image or []:
            check_control_shape(open_image(path, "control image"), size, label(path))
        if self.ip_adapter_image is not None:
            if not self.ip_adapter:
                raise DiffDiffError("--ip-adapter-image needs an IP-Adapter: add --ip-adapter FILE")
            open_image(self.ip_adapter_image, "IP-Adapter image")

    def load_kw(self) -> dict[str, Any]:
        """``Editor.from_pretrained`` keywords for the add-ons given (none: none)."""
        return addon_load_kw(self.controlnet, self.lora, self.ip_adapter, self.ip_adapter_scale)

    def request_kw(self) -> dict[str, Any]:
        """The :class:`~diffdiff.request.EditRequest` fields of the per-edit inputs (file paths as strings,
        so the metadata records the file names as well as the images' hashes)."""
        return {
            "control_image": [str(c) for c in self.control_image] if self.control_image else None,
            "control_from": self.control_from,
            "controlnet_conditioning_scale": list(self.control_scale) if self.control_scale else None,
            "control_mode": self.control_mode,
            "ip_adapter_image": str(self.ip_adapter_image) if self.ip_adapter_image is not None else None,
        }


if [name for name, _, _ in OPTIONS] != [f.name for f in fields(AddonOptions)]:  # pragma: no cover - a typo here
    raise TypeError("OPTIONS and AddonOptions must list the same options")


def addon_load_kw(controlnet: Optional[list[str]], lora: Optional[list[str]], ip_adapter: Optional[str],
                  ip_adapter_scale: float) -> dict[str, Any]:
    """``Editor.from_pretrained`` keywords for add-ons given on a command line (``serve`` too)."""
    from ..addon_inputs import check_scales
    from ..lora import parse_lora

    kw: dict[str, Any] = {}
    if controlnet:
        kw["controlnet"] = tuple(controlnet)
    if lora:
        kw["lora"] = tuple(parse_lora(spec) for spec in lora)
    if ip_adapter:
        kw["ip_adapter"] = ip_adapter
        kw["ip_adapter_scale"] = check_scales(ip_adapter_scale, "--ip-adapter-scale")[0]
    return kw


def addon_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a typer command the add-on options; its ``addons`` parameter receives them as :class:`AddonOptions`.

    Use it under ``@app.command()``. The command's own parameters keep their order; the add-on options
    follow, listed in ``--help`` under :data:`PANEL`.
    """
    names = [name for name, _, _ in OPTIONS]
    signature = inspect.signature(command, eval_str=True)
    if "addons" not in signature.parameters:
        raise TypeError(f"{command.__name__} needs an 'addons: AddonOptions' parameter")
    own = [p for p in signature.parameters.values() if p.name != "addons"]
    clash = set(names) & {p.name for p in own}
    if clash:
        raise TypeError(f"{command.__name__} declares add-on options itself: {', '.join(sorted(clash))}")
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, kind, option in OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        addons = AddonOptions(**{name: kwargs.pop(name) for name in names})
        command(**kwargs, addons=addons)

    params = own + added
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return wrapper
