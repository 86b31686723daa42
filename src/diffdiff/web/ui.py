"""The Gradio UI: paint a change map over the image, preview its levels, edit, fan out, DiffEdit.

The map is a toolkit map (gradient, soft map, auto map; black until one is made) with the brush
strokes painted on the canvas composited over it: a white stroke's opacity is the amount of change,
opaque black paints "keep". The canvas shows the image and the strokes; the preview beside it
shows the whole map and the levels the run will use. (The toolkit map is held server-side in a
``gr.State`` rather than pushed into the canvas as a layer: Gradio's editor does not reliably
render layers set from Python.) With a ControlNet loaded the Edit tab also takes a control image (or
derives one from the input with Canny) and a control scale, and for a ControlNet Union its control
type (the modes the model was trained with); with an IP-Adapter, a reference image (:func:`addon_kwargs`
turns them into the run's arguments). The Strength fan tab runs with those same inputs (``Editor.fan``
takes the edit's arguments). A model that takes extra reference images (Qwen-Image-Edit-Plus) gets a
multi-image input for the edit (:func:`reference_list`). The auto map and DiffEdit take no add-on inputs
and are offered only where :func:`diffdiff.denoise.unsupported_reason` allows them. Every model call
goes through the same :class:`~diffdiff.web.service.EditService` queue as the REST API.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from .. import maps
from ..denoise import SUPPORTED_FAMILIES, unsupported_reason
from ..errors import DiffDiffError, DiffDiffWarning
from ..levels import executed_steps
from .service import MAX_REFERENCE_IMAGES, EditService, QueueFull, png_bytes

UI_CSS = """
#dd-header h1 { margin-bottom: 0; }
#dd-header p { margin-top: 0.2em; opacity: 0.8; }
/* Gradio 6's gallery ignores `columns` here and draws one result as a full-width square. */
#dd-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)) !important; }
#dd-gallery .thumbnail-item { width: 100% !important; height: 180px !important; }
"""

HEADER = """# diffdiff
Graded image editing (Differential Diffusion): **each pixel changes as much as the change map allows**.
Upload an image, paint where it may change (white = change; the brush's opacity is how much), or build
the map with the toolkit, then run the edit."""

#: Brush: opacity of a white stroke = amount of change; opaque black paints "keep" over a map.
BRUSH_COLOURS: list[Any] = [("#ffffff", 1.0), ("#ffffff", 0.75), ("#ffffff", 0.5), ("#ffffff", 0.25), ("#000000", 1.0)]

#: Results kept in the gallery (newest first).
MAX_GALLERY = 24

#: Where the ControlNet's control image comes from: (label, value) choices of the Edit tab.
CONTROL_SOURCES: list[tuple[str, str]] = [("the control image uploaded here", "upload"), ("derive from input: canny", "canny")]


# pure helpers (tested without a browser) ----------------------------------------------------------
def _as_pil(x: Any) -> Optional[Image.Image]:
    if x is None:
        return None
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, np.ndarray):
        return Image.fromarray(x)
    if isinstance(x, (str, Path)):
        with Image.open(x) as im:
            im.load()
            return im.copy()
    return None


def canvas_image(value: Any) -> Optional[Image.Image]:
    """The uploaded image (the canvas background) as RGB, or None."""
    bg = _as_pil(value.get("background")) if isinstance(value, dict) else None
    return bg.convert("RGB") if bg is not None else None


def canvas_map(value: Any, base: Optional[Image.Image] = None) -> Optional[Image.Image]:
    """The change map ("L", image size): the canvas strokes composited over ``base`` (else black)."""
    bg = canvas_image(value)
    if bg is None:
        return None
    if base is not None and base.size == bg.size:
        out = Image.merge("RGBA", (base.convert("L"),) * 3 + (Image.new("L", bg.size, 255),))
    else:
        out = Image.new("RGBA", bg.size, (0, 0, 0, 255))
    for layer in value.get("layers") or []:
        lay = _as_pil(layer)
        if lay is None:
            continue
        lay = lay.convert("RGBA")
        if lay.size != bg.size:  # the canvas may be larger than the image; layers follow the image
            lay = lay.resize(bg.size, Image.Resampling.BILINEAR)
        out = Image.alpha_composite(out, lay)
    return out.convert("L")


def fit_map(change_map: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A toolkit map as an "L" image of the canvas image's size."""
    m = change_map.convert("L")
    return m if m.size == size else m.resize(size, Image.Resampling.BILINEAR)


def map_preview(image: Image.Image, change_map: Image.Image, steps: int, strength: float, polarity: str,
                planned_steps: Optional[Callable[[int, float], int]] = None) -> tuple[Image.Image, str]:
    """The map over the image with the levels ``steps`` x ``strength`` will use, and a summary.

    ``planned_steps`` is the loaded model's executed-steps rule (flow models truncate differently);
    default :func:`diffdiff.levels.executed_steps`.
    """
    total = (planned_steps or executed_steps)(steps, strength)
    pv = maps.preview(image, change_map, steps, strength, polarity, planned_steps=planned_steps)  # type: ignore[arg-type]
    used = len([k for k, c in pv.info.get("diffdiff_levels", {}).items() if c and k > 0])
    if total == 0:
        text = "**0 steps will run** (steps × strength < 1): the result will be the input."
    else:
        text = (f"**{total}** of {steps} steps will run: the map is quantised to **{total + 1} levels**"
                + f", {used} of them used by this map (besides 'keep').")
    return pv, text


def addon_kwargs(controlnet: bool, ip_adapter: bool, control_source: Optional[str], control_image: Any,
                 control_scale: Any, ip_image: Any, union_modes: Sequence[str] = (),
                 control_mode: Optional[str] = None) -> dict[str, Any]:
    """The add-on arguments of an edit or a fan from the Edit tab's add-on inputs, for what the model has loaded.

    ``controlnet`` / ``ip_adapter``: whether the served model has one (the inputs are shown only then).
    ``control_source`` ``"canny"`` derives the control image from the input; ``"upload"`` uses
    ``control_image``. ``union_modes``: a served ControlNet Union's control types (empty for none);
    ``control_mode`` must be one of them, and is needed with an uploaded control image (derived
    edges default to ``canny``, as in the library). A missing or bad input is one line saying what to do.
    """
    kw: dict[str, Any] = {}
    if controlnet:
        if control_source == "canny":
            kw["control_from"] = "canny"
        else:
            control = _as_pil(control_image)
            if control is None:
                raise DiffDiffError("A ControlNet is loaded: upload a control image, or choose 'derive from input: canny'.")
            kw["control_image"] = control
        if control_scale not in (None, ""):
            kw["controlnet_conditioning_scale"] = float(control_scale)
    if control_mode not in (None, ""):
        if not union_modes:
            raise DiffDiffError("A control type is only for a ControlNet Union, and none is loaded.")
        if control_mode not in union_modes:
            raise DiffDiffError(f"Control type {control_mode!r} is not one this ControlNet Union was trained with: "
                                f"choose one of {', '.join(union_modes)}.")
        kw["control_mode"] = control_mode
    elif union_modes and "control_image" in kw:
        raise DiffDiffError(f"A ControlNet Union is loaded: choose the uploaded control image's type "
                            f"({', '.join(union_modes)}).")
    if ip_adapter:
        reference = _as_pil(ip_image)
        if reference is None:
            raise DiffDiffError("An IP-Adapter is loaded: upload its reference image.")
        kw["ip_adapter_image"] = reference
    return kw


def reference_list(value: Any, check_pixels: Optional[Callable[[tuple[int, int], str], None]] = None) -> list[Image.Image]:
    """The Edit tab's extra reference images, in order, as ``Editor.edit(reference_images=[...])`` takes them.

    ``value`` is the gallery's: ``(image, caption)`` pairs (or images, arrays, file paths); None or
    empty is none. At most :data:`~diffdiff.web.service.MAX_REFERENCE_IMAGES`; ``check_pixels(size, what)``
    refuses one above the server's pixel limit. A bad item is one line naming it.
    """
    items = list(value or [])
    if len(items) > MAX_REFERENCE_IMAGES:
        raise DiffDiffError(f"{len(items)} reference images given; at most {MAX_REFERENCE_IMAGES} on this server.")
    out: list[Image.Image] = []
    for i, item in enumerate(items, 1):
        what = f"reference image {i}"
        media = item[0] if isinstance(item, (tuple, list)) else item
        try:
            img = _as_pil(media)
            # A file-backed image (Gradio's upload) is read now and kept as a plain image, as the REST API
            # and the CLI pass them: the metadata records each as "<Image (w, h)>".
            if img is not None and type(img) is not Image.Image:
                img = img.copy()
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's unreadable and truncated files
            raise DiffDiffError(f"{what} is not a readable image (unknown or corrupt format).") from exc
        if img is None:
            raise DiffDiffError(f"{what} is not an image (got {type(media).__name__}).")
        if check_pixels is not None:
            check_pixels(img.size, what)
        out.append(img)
    return out


class ResultStore:
    """PNG files of results in a folder the server owns; names come from a counter, never the client."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="diffdiff-serve-"))
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def save(self, img: Image.Image, kind: str, metadata: Optional[dict[str, Any]] = None) -> str:
        with self._lock:
            n = next(self._counter)
        meta = metadata if metadata is not None else img.info.get("diffdiff")
        seed = f"-seed{meta['seed']}" if meta and meta.get("seed") is not None else ""
        path = self._dir / f"{kind}-{n:04d}{seed}.png"
        path.write_bytes(png_bytes(img, meta))
        return str(path)


# the Blocks ------------------------------------------------------------------------------------------
def build_ui(service: EditService) -> Any:
    import gradio as gr

    store = ResultStore()

    def run_job(fn: Any, progress: Any) -> Any:
        """Run ``fn(editor)`` in the shared queue, mapping our errors to Gradio's message boxes."""
        progress(0.0, desc="waiting for the model")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DiffDiffWarning)

                def locked(ed: Any) -> Any:
                    # tqdm bars of the pipeline drive gr.Progress(track_tqdm=True) while we run.
                    ed.set_progress_bar(True)
                    try:
                        return fn(ed)
                    finally:
                        ed.set_progress_bar(False)

                out = service.submit(locked)
            for w in caught:
                if issubclass(w.category, DiffDiffWarning):
                    gr.Warning(str(w.message))
            return out
        except QueueFull as exc:
            raise gr.Error(str(exc)) from None
        except DiffDiffError as exc:
            raise gr.Error(str(exc)) from None

    def need(value: Any, base: Optional[Image.Image]) -> tuple[Image.Image, Image.Image]:
        img = canvas_image(value)
        if img is None:
            raise gr.Error("Upload an image first (drop it on the canvas).")
        try:
            service.check_pixels(img.size, "image")
        except DiffDiffError as exc:
            raise gr.Error(str(exc)) from None
        cmap = canvas_map(value, base)
        assert cmap is not None
        return img, cmap

    def seed_or_none(seed: Any) -> Optional[int]:
        return None if seed is None or int(seed) < 0 else int(seed)

    def addons_of(control_source: Optional[str], control_image: Any, control_scale: Any, ip_image: Any,
                  control_mode: Optional[str]) -> dict[str, Any]:
        """:func:`addon_kwargs` for the served model; a missing upload is Gradio's one-line message."""
        try:
            return addon_kwargs(has_control, has_ip, control_source, control_image, control_scale, ip_image,
                                union_modes, control_mode)
        except DiffDiffError as exc:
            raise gr.Error(str(exc)) from None

    def references_of(value: Any) -> dict[str, Any]:
        """The edit's ``reference_images`` argument from the gallery (none: no argument); bad input is one line."""
        try:
            refs = reference_list(value, service.check_pixels)
        except DiffDiffError as exc:
            raise gr.Error(str(exc)) from None
        return {"reference_images": refs} if refs else {}

    # handlers: the toolkit ones return the new base map (a gr.State) --------------------------
    def update_preview(value: Any, base: Optional[Image.Image], steps: float, strength: float,
                       polarity: str) -> tuple[Any, str]:
        img = canvas_image(value)
        if img is None:
            # The editor reports an empty value mid-upload: keep what is shown.
            return gr.skip(), gr.skip()
        cmap = canvas_map(value, base)
        assert cmap is not None
        try:
            rule = getattr(service._editor, "planned_steps", None) if service.loaded else None
            return map_preview(img, cmap, int(steps), float(strength), polarity, rule)
        except DiffDiffError as exc:
            return None, f"⚠ {exc}"

    def make_gradient(value: Any, direction: str) -> Image.Image:
        img = canvas_image(value)
        if img is None:
            raise gr.Error("Upload an image first.")
        return maps.gradient(img.size, direction=direction)  # type: ignore[return-value]

    def make_soft(value: Any, base: Optional[Image.Image], softness: float) -> Image.Image:
        img, cmap = need(value, base)
        if not np.any(np.asarray(cmap) >= 128):
            raise gr.Error("Paint the region to regenerate first (opaque white), then soften it.")
        return fit_map(maps.soft_map(cmap, float(softness)), img.size)  # type: ignore[arg-type]

    def make_auto(value: Any, source: str, target: str, seed: Any, progress: Any = gr.Progress()) -> Image.Image:
        img, _ = need(value, None)
        if not source.strip() or not target.strip():
            raise gr.Error("Give both prompts: what the image shows now, and what it should show.")
        m = run_job(lambda ed: ed.auto_map(img, source, target, seed=seed_or_none(seed)), progress)
        return fit_map(m, img.size)

    def clear_map() -> None:
        return None

    def run_edit(value: Any, base: Optional[Image.Image], prompt: str, negative: str, steps: float, guidance: Any, strength: float, seed: Any,
                 polarity: str, history: list[str], control_source: Optional[str] = None, control_image: Any = None,
                 control_scale: Any = None, ip_image: Any = None, control_mode: Optional[str] = None,
                 references: Any = None, progress: Any = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:
        img, cmap = need(value, base)
        if not prompt.strip():
            raise gr.Error("Write a prompt: what the edited image should show.")
        extra = addons_of(control_source, control_image, control_scale, ip_image, control_mode)
        extra.update(references_of(references))
        out = run_job(lambda ed: ed.edit(
            img, cmap, prompt, negative_prompt=negative or None, num_inference_steps=int(steps),
            guidance_scale=None if guidance in (None, "") else float(guidance), strength=float(strength),
            seed=seed_or_none(seed), polarity=polarity, metadata={"served_by": "diffdiff serve (ui)"}, **extra,
        ), progress)
        res = out[0]
        path = store.save(res, "edit")
        history = ([path] + list(history or []))[:MAX_GALLERY]
        return history, res.info.get("diffdiff"), history

    def run_fan(value: Any, base: Optional[Image.Image], prompt: str, negative: str, steps: float, guidance: Any, seed: Any, polarity: str,
                columns: float, lo: float, hi: float, use_map: bool, control_source: Optional[str] = None,
                control_image: Any = None, control_scale: Any = None, ip_image: Any = None,
                control_mode: Optional[str] = None, progress: Any = gr.Progress(track_tqdm=True)) -> str:
        img, cmap = need(value, base)
        if not prompt.strip():
            raise gr.Error("Write a prompt on the Edit tab.")
        if lo > hi:
            raise gr.Error("The minimum strength is above the maximum.")
        extra = addons_of(control_source, control_image, control_scale, ip_image, control_mode)
        out = run_job(lambda ed: ed.fan(
            img, prompt, columns=int(columns), min_strength=float(lo), max_strength=float(hi),
            change_map=cmap if use_map else None, negative_prompt=negative or None, num_inference_steps=int(steps),
            guidance_scale=None if guidance in (None, "") else float(guidance), seed=seed_or_none(seed),
            polarity=polarity, **extra,
        ), progress)
        res = out if isinstance(out, Image.Image) else out[0]
        return store.save(res, "fan")

    def run_diffedit(value: Any, base: Optional[Image.Image], source: str, target: str, threshold: float, steps: float, seed: Any,
                     use_map: bool, progress: Any = gr.Progress(track_tqdm=True)) -> str:
        img, cmap = need(value, base)
        if not source.strip() or not target.strip():
            raise gr.Error("Give both prompts.")
        mask = cmap if use_map else None
        out = run_job(lambda ed: ed.diffedit(img, source, target, mask=mask, threshold=float(threshold),
                                             num_inference_steps=int(steps), seed=seed_or_none(seed)), progress)
        res = out if isinstance(out, Image.Image) else out[0]
        return store.save(res, "diffedit")

    # layout -----------------------------------------------------------------------------------
    # gr.Number cannot show "empty", so offer the loaded model's own default guidance.
    default_guidance: Optional[float] = 7.5
    if service.loaded:
        adapter = getattr(service._editor, "adapter", None)
        default_guidance = adapter.default_guidance() if adapter is not None else None
    features = service.features()
    family = getattr(service._editor, "family", None)
    # Add-on inputs for what the served model has loaded (a lazily loaded model shows none).
    addons = getattr(service._editor, "addons", None) if service.loaded else None
    has_control = bool(addons is not None and addons.controlnets)
    has_ip = bool(addons is not None and addons.ip_adapter)
    # A ControlNet Union's control types: those it was trained with (none for another model).
    union_modes = service.union_modes()
    # Extra reference images, for a model that takes them (Qwen-Image-Edit-Plus).
    takes_refs = service.loaded and service.takes_references()
    # Why the auto map and DiffEdit are off for this model (they take no add-on inputs).
    no_predictor = (unsupported_reason(service._editor) if service.loaded else None) or "the editor has no Editor.diffedit"
    with gr.Blocks(title="diffdiff") as demo:
        gr.Markdown(HEADER, elem_id="dd-header")
        history = gr.State([])
        base_map = gr.State(None)  # the toolkit's map; strokes on the canvas are painted over it
        with gr.Tabs():
            with gr.Tab("Edit", id="edit"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        canvas = gr.ImageEditor(
                            label="Image: paint white where it may change (opacity = how much; black = keep)",
                            type="pil", image_mode="RGBA", format="png", sources=("upload", "clipboard"),
                            brush=gr.Brush(colors=BRUSH_COLOURS, default_color=BRUSH_COLOURS[0], color_mode="fixed"),
                            eraser=gr.Eraser(), layers=False, transforms=(), height=460, elem_id="dd-canvas",
                        )
                        with gr.Accordion("Map toolkit", open=True):
                            with gr.Row():
                                direction = gr.Dropdown(
                                    ["left-right", "right-left", "top-bottom", "bottom-top", "radial"],
                                    value="left-right", label="Gradient direction (0 → 1)", scale=2)
                                grad_btn = gr.Button("Gradient map", elem_id="dd-gradient", scale=1)
                            with gr.Row():
                                softness = gr.Slider(0, 64, value=8, step=1, label="Softness (px)", scale=2)
                                soft_btn = gr.Button("Soften painted mask", elem_id="dd-soft", scale=1)
                            with gr.Row():
                                src_prompt = gr.Textbox(label="Now shows", placeholder="a photo of a bowl of apples")
                                tgt_prompt = gr.Textbox(label="Should show", placeholder="a photo of a bowl of pears")
                            auto_ok = features["auto_map"]
                            auto_btn = gr.Button("Auto map from prompts" if auto_ok else
                                                 f"Auto map (not for the {family} family)" if family not in
                                                 SUPPORTED_FAMILIES else "Auto map (not with an IP-Adapter)",
                                                 interactive=auto_ok, elem_id="dd-auto")
                            with gr.Row():
                                show_btn = gr.Button("Show map and levels", size="sm", elem_id="dd-show")
                                clear_btn = gr.Button("Clear toolkit map", size="sm")
                    with gr.Column(scale=1):
                        preview = gr.Image(label="Map over the image: levels the run will use", interactive=False,
                                           type="pil", height=300, elem_id="dd-preview")
                        levels_md = gr.Markdown("Upload an image to see the map and its levels.", elem_id="dd-levels")
                        prompt = gr.Textbox(label="Prompt", placeholder="what the edited image should show",
                                            elem_id="dd-prompt")
                        negative = gr.Textbox(label="Negative prompt", placeholder="optional")
                        with gr.Row():
                            steps = gr.Slider(1, 150, value=30, step=1, label="Steps", elem_id="dd-steps")
                            strength = gr.Slider(0, 1, value=1.0, step=0.01, label="Strength (where white)")
                        with gr.Row():
                            guidance = gr.Number(value=default_guidance, label="Guidance (CFG)", minimum=0)
                            seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="dd-seed")
                            polarity = gr.Radio(["change", "keep"], value="change", label="White means")
                        # Add-on inputs, shown only for what the model has loaded; otherwise an empty state.
                        control_source: Any
                        control_image: Any
                        control_scale: Any
                        control_mode: Any
                        ip_image: Any
                        references: Any
                        if has_control:
                            with gr.Accordion("ControlNet", open=True):
                                control_source = gr.Radio(CONTROL_SOURCES, value="upload", label="Control image",
                                                          elem_id="dd-control-source")
                                control_image = gr.Image(label="Control image (the input's aspect ratio)", type="pil",
                                                         sources=("upload", "clipboard"), height=200,
                                                         elem_id="dd-control-image")
                                control_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Control scale",
                                                          elem_id="dd-control-scale")
                                if union_modes:
                                    control_mode = gr.Dropdown(
                                        union_modes, value=None, label="Control type (ControlNet Union; derived "
                                        "edges default to canny)", elem_id="dd-control-mode")
                                else:
                                    control_mode = gr.State(None)
                        else:
                            control_source = control_image = control_scale = control_mode = gr.State(None)
                        if has_ip:
                            ip_image = gr.Image(label="IP-Adapter reference image", type="pil",
                                                sources=("upload", "clipboard"), height=200, elem_id="dd-ip-image")
                        else:
                            ip_image = gr.State(None)
                        if takes_refs:
                            references = gr.Gallery(
                                label=f"Extra reference images (after the input, in order; at most {MAX_REFERENCE_IMAGES})",
                                type="pil", file_types=["image"], sources=["upload", "clipboard"], interactive=True,
                                columns=4, height=200, format="png", elem_id="dd-references")
                        else:
                            references = gr.State(None)
                        run_btn = gr.Button("Run edit", variant="primary", elem_id="dd-run")
                gallery = gr.Gallery(label="Results: PNG files with the parameters as metadata", columns=4,
                                     format="png", elem_id="dd-gallery", preview=False, allow_preview=True,
                                     height=340, object_fit="contain")
                meta = gr.JSON(label="Parameters of the latest result", open=False)

            with gr.Tab("Strength fan", id="fan"):
                if features["fan"]:
                    gr.Markdown("One run whose columns go from the minimum to the maximum strength, left to right. "
                                "Uses the image, prompt and settings of the **Edit** tab"
                                + (", and its ControlNet / IP-Adapter inputs" if has_control or has_ip else "")
                                + (" (not its extra reference images: those are the edit's)." if takes_refs else "."))
                    with gr.Row():
                        columns = gr.Slider(2, 12, value=5, step=1, label="Columns")
                        lo = gr.Slider(0, 1, value=0.0, step=0.05, label="Min strength")
                        hi = gr.Slider(0, 1, value=1.0, step=0.05, label="Max strength")
                        fan_map = gr.Checkbox(False, label="Multiply by the painted map")
                    fan_btn = gr.Button("Run fan", variant="primary", elem_id="dd-fan-run")
                    fan_out = gr.Image(label="Fan (PNG with metadata)", type="filepath", format="png", height=420,
                                       interactive=False, elem_id="dd-fan-out")
                    fan_btn.click(run_fan, [canvas, base_map, prompt, negative, steps, guidance, seed, polarity, columns, lo, hi,
                                            fan_map, control_source, control_image, control_scale, ip_image,
                                            control_mode], fan_out)
                else:
                    gr.Markdown("The loaded editor has no strength fan (`Editor.fan`).")

            with gr.Tab("DiffEdit", id="diffedit"):
                if features["diffedit"]:
                    gr.Markdown("DiffEdit finds the region from the two prompts, inverts the image and re-generates "
                                "only there. Uses the image of the **Edit** tab.")
                    with gr.Row():
                        de_src = gr.Textbox(label="Source prompt (what the image shows)")
                        de_tgt = gr.Textbox(label="Target prompt (the edit)")
                    with gr.Row():
                        de_thr = gr.Slider(0, 1, value=0.5, step=0.05, label="Mask threshold")
                        de_steps = gr.Slider(1, 150, value=50, step=1, label="Steps")
                        de_seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                        de_map = gr.Checkbox(False, label="Use the painted map as the mask")
                    de_btn = gr.Button("Run DiffEdit", variant="primary", elem_id="dd-diffedit-run")
                    de_out = gr.Image(label="Result (PNG with metadata)", type="filepath", format="png", height=420,
                                      interactive=False)
                    de_btn.click(run_diffedit, [canvas, base_map, de_src, de_tgt, de_thr, de_steps, de_seed, de_map], de_out)
                else:
                    gr.Markdown(f"DiffEdit is not available here: {no_predictor}.", elem_id="dd-diffedit-off")

            with gr.Tab("REST API", id="api"):
                gr.Markdown(API_HELP)

        preview_inputs = [canvas, base_map, steps, strength, polarity]
        preview_outputs = [preview, levels_md]
        quiet: dict[str, Any] = {"show_progress": "hidden", "trigger_mode": "always_last", "queue": False}
        # Gradio's editor sends strokes late (no event per stroke), so previews also refresh on
        # every button below and on the explicit "Show map" button.
        for ctl in (steps, strength, polarity):
            ctl.change(update_preview, preview_inputs, preview_outputs, **quiet)
        canvas.input(update_preview, preview_inputs, preview_outputs, **quiet)
        show_btn.click(update_preview, preview_inputs, preview_outputs, **quiet)
        # A new image starts without a toolkit map (the old one has the old image's shape).
        canvas.upload(clear_map, None, base_map, queue=False).then(update_preview, preview_inputs, preview_outputs, **quiet)
        grad_btn.click(make_gradient, [canvas, direction], base_map, queue=False).then(
            update_preview, preview_inputs, preview_outputs, **quiet)
        soft_btn.click(make_soft, [canvas, base_map, softness], base_map, queue=False).then(
            update_preview, preview_inputs, preview_outputs, **quiet)
        auto_btn.click(make_auto, [canvas, src_prompt, tgt_prompt, seed], base_map).then(
            update_preview, preview_inputs, preview_outputs, **quiet)
        clear_btn.click(clear_map, None, base_map, queue=False).then(update_preview, preview_inputs, preview_outputs,
                                                                    **quiet)
        run_btn.click(update_preview, preview_inputs, preview_outputs, **quiet).then(
            run_edit, [canvas, base_map, prompt, negative, steps, guidance, strength, seed, polarity, history,
                       control_source, control_image, control_scale, ip_image, control_mode, references],
            [gallery, meta, history])
    return demo


API_HELP = """### REST API
The same server answers JSON/PNG requests; the schema is at [`/docs`](/docs) and `/openapi.json`.

```bash
curl -f -o out.png http://127.0.0.1:7860/api/edit \\
  -F image=@photo.png -F map=@map.png -F prompt="a wildfire in the forest" -F steps=30 -F seed=1
```
`POST /api/fan` (image, prompt, columns, min_strength, max_strength), `POST /api/auto-map` (image,
source_prompt, target_prompt) and `POST /api/diffedit` work the same way; `GET /api/health` reports
the model and the queue. A full queue answers 503 with `Retry-After`.
"""
