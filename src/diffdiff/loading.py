"""Loading real models: hub id, local diffusers folder or single-file checkpoint, and family parts.

Everything goes through diffusers' own ``from_pretrained`` / ``from_single_file``; this module only
chooses the entry point, picks a device and dtype, loads the extra pipelines a family declares
(:class:`diffdiff.families.base.PartSpec`: SDXL's refiner, Kandinsky's prior, IF's stages), and turns
the usual wall of HTTP and OS errors into one line that tells the user what to do. A hub id is
always tried from the local cache first, then from the hub only if it can be reached. A file that
holds only a transformer / UNet (``flux1-dev.safetensors``) is loaded as that component of the base
model given as ``config=``, and component arguments may be such files (``transformer="x.safetensors"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import diffusers
import torch

from .errors import ModelLoadError
from .families import adapter_class, check_parts, load_as_class
from .micro import MICRO_NAME, model_path
from .pipeinfo import as_img2img
from .processors import substitutes

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")

#: The model the CLI and web app use when none is given (downloaded on first use).
DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"


def default_device() -> tuple[str, torch.dtype]:
    """CUDA in fp16 if present, else Apple MPS in fp16, else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.float16
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", torch.float16
    return "cpu", torch.float32


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if str(dtype) not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[str(dtype)]


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """The loaders' dtype argument: ``dtype`` where diffusers has it (``torch_dtype`` there warns as
    deprecated), ``torch_dtype`` on older versions."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def resolve_device_dtype(device: Optional[str], torch_dtype: Any) -> tuple[str, torch.dtype]:
    """The device (best available when None) and dtype (that device's default when None)."""
    if device is None:
        device, auto = default_device()
        return device, resolve_dtype(torch_dtype, device) if torch_dtype is not None else auto
    return device, resolve_dtype(torch_dtype, device)


# Single-file checkpoint type (diffusers' key inference) -> img2img pipeline class name.
_SINGLE_FILE_CLASSES = {
    "xl_base": "StableDiffusionXLImg2ImgPipeline",
    "xl_refiner": "StableDiffusionXLImg2ImgPipeline",
    "playground-v2-5": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Img2ImgPipeline",
    "sd35_medium": "StableDiffusion3Img2ImgPipeline",
    "sd35_large": "StableDiffusion3Img2ImgPipeline",
    "flux-dev": "FluxImg2ImgPipeline",
    "flux-schnell": "FluxImg2ImgPipeline",
}


def _single_file_class(path: Path, config: Optional[str], shapes: Optional[dict[str, torch.Tensor]] = None) -> Any:
    import diffusers

    if config is not None:
        # A diffusers folder (or hub id) supplies the configs: take the class from its model index.
        index = Path(config) / "model_index.json"
        if index.is_file():
            import json

            name = json.loads(index.read_text())["_class_name"]
            return _img2img_class(getattr(diffusers, name))
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    try:  # the header's shapes are all the inference looks at; avoids reading the weights twice
        kind = infer_diffusers_model_type(shapes) if shapes is not None else None
    except Exception:
        kind = None
    if kind is None:
        kind = infer_diffusers_model_type(load_single_file_checkpoint(str(path)))
    name = _SINGLE_FILE_CLASSES.get(kind, "StableDiffusionImg2ImgPipeline")
    return getattr(diffusers, name)


_SD_FAMILY_CLASSES = ("StableDiffusionImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline")


def _checkpoint_shapes(path: Path, model: str) -> Optional[dict[str, torch.Tensor]]:
    """Key -> shape-only (meta) tensor from a .safetensors header; None for pickled formats.

    Reading the header is instant even for a 7 GB file, so a corrupt or foreign file fails here with
    one clear line instead of deep inside diffusers.
    """
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as exc:
        raise ModelLoadError(f"'{model}' is not a valid .safetensors checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _single_file_kwargs(model: str, kwargs: dict[str, Any]) -> None:
    """Check ``config=`` / ``original_config=`` up front (diffusers wants them as str)."""
    config = kwargs.get("config")
    if config is not None:
        cfg = Path(str(config)).expanduser()
        if cfg.exists() and not (cfg / "model_index.json").is_file():
            raise ModelLoadError(f"config '{config}' is not a diffusers model folder (no model_index.json)")
        if not cfg.exists() and (str(config).startswith((".", "/", "~")) or str(config).count("/") > 1):
            raise ModelLoadError(f"config folder '{config}' does not exist")
        kwargs["config"] = str(cfg) if cfg.exists() else str(config)
    original = kwargs.get("original_config")
    if isinstance(original, (str, os.PathLike)) and not str(original).startswith(("http://", "https://")):
        yaml_file = Path(str(original)).expanduser()
        if not yaml_file.is_file():
            raise ModelLoadError(f"original config '{original}' does not exist (expected the model's .yaml file)")
        kwargs["original_config"] = str(yaml_file)


def _own_unaligned_weights(pipe: Any) -> None:
    """Copy weights that are views into the checkpoint's buffer at odd addresses into fresh memory.

    On the CPU, unaligned tensors take other kernel paths, so the same model loaded from a folder
    gave last-bit-different images for the same seed. Copies one tensor at a time (no 2x peak).
    """
    for module in getattr(pipe, "components", {}).values():
        if isinstance(module, torch.nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()


def _single_file_error(model: str, exc: BaseException, config: Any) -> ModelLoadError:
    """One line for a failed ``from_single_file``, saying what the user can do about it."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, SingleFileComponentError):
        return ModelLoadError(f"single-file checkpoint '{model}' is incomplete or not in the original (LDM) layout: "
                              f"{_first_line(exc)}")
    if "split_with_sizes" in text and "3072" in text:  # diffusers' Flux conversion assumes Flux.1's width
        return ModelLoadError(f"'{model}' holds a Flux transformer narrower than Flux.1's 3072 channels, which "
                              "diffusers' single-file conversion cannot read; load it from a diffusers folder")
    offline = ("localentrynotfound", "offline", "connection", "max retries", "couldn't connect",
               "cannot find the requested files", "resolve")
    if any(m in text for m in offline):
        where = f"config '{config}' is not available offline" if config is not None else "needs its model configs"
        return ModelLoadError(f"single-file checkpoint '{model}' {where}: run once with network access "
                              "or pass config=<diffusers folder> (CLI: --model-config)")
    if any(m in text for m in ("deserializ", "unpickl", "invalid load key", "unable to load weights", "headertoo")):
        return ModelLoadError(f"'{model}' is not a valid checkpoint file ({_first_line(exc)})")
    return ModelLoadError(f"could not load single-file checkpoint '{model}': {_first_line(exc)}")


def _img2img_class(cls: Any) -> Any:
    """The img2img pipeline class matching a text-to-image (or img2img) class."""
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, _get_task_class

    return _get_task_class(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, cls.__name__)


def _friendly(model: str, exc: BaseException) -> ModelLoadError:
    text = f"{type(exc).__name__}: {exc}"
    offline_markers = ("LocalEntryNotFound", "offline", "Connection", "resolve", "Max retries", "cannot find the requested files",
                       "We couldn't connect", "HF_HUB_OFFLINE", "couldn't connect")
    if any(m.lower() in text.lower() for m in offline_markers):
        return _offline(model)
    if "Repository Not Found" in text or "RepositoryNotFound" in text or "404" in text:
        return ModelLoadError(f"model '{model}' was not found on the hub; check the id or pass a local path")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"could not load model '{model}': {first}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (one TCP connect, no retries)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline(model: str) -> ModelLoadError:
    return ModelLoadError(
        f"model '{model}' is not in the local cache and the hub cannot be reached; "
        "run once with network access or pass a local path"
    )


def _cache_then_hub(model_id: str, load: Callable[..., Any]) -> Any:
    """``load()`` from the local cache first; from the hub only if the cache misses and it answers."""
    try:
        return load(local_files_only=True)
    except Exception as exc:  # not (fully) cached
        if not hub_reachable():
            raise _offline(model_id) from exc
    return load()


def _from_hub(model_id: str, dtype: torch.dtype, **kwargs: Any) -> Any:
    """Load by hub id as an img2img pipeline (cache first)."""
    from diffusers import AutoPipelineForImage2Image

    return _cache_then_hub(
        model_id, lambda **extra: AutoPipelineForImage2Image.from_pretrained(model_id, **dtype_kwargs(dtype), **kwargs, **extra)
    )


def load_pipeline(
    model: str | os.PathLike[str],
    device: Optional[str] = None,
    torch_dtype: Any = None,
    **kwargs: Any,
) -> Any:
    """Load an img2img pipeline from a hub id, a diffusers folder or a single checkpoint file."""
    from diffusers import AutoPipelineForImage2Image

    device, dtype = resolve_device_dtype(device, torch_dtype)
    model_str = str(model)
    # --- issue 14: "micro" is the packaged micro model, unless a local path of that name exists ---
    if model_str == MICRO_NAME and not Path(model_str).expanduser().exists():
        model_str = str(model_path())
    # --- end issue 14 ---
    path = Path(model_str).expanduser()
    looks_local = path.exists() or model_str.startswith((".", "/", "~")) or path.suffix in SINGLE_FILE_SUFFIXES
    try:
        if looks_local and not path.exists():
            raise ModelLoadError(f"model path '{model_str}' does not exist")
        if not path.is_file() and any(kwargs.get(k) is not None for k in ("config", "original_config")):
            # diffusers would silently ignore them for a folder or hub id
            raise ModelLoadError(f"a model config only applies to a single-file checkpoint, not to '{model_str}'")
        if path.is_file():
            if path.suffix not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(
                    f"'{model_str}' is a file but not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}); "
                    "pass a diffusers folder, a hub id or a single-file checkpoint"
                )
            _single_file_kwargs(model_str, kwargs)
            shapes = _checkpoint_shapes(path, model_str)
            try:
                cls = kwargs.pop("pipeline_class", None) or _single_file_class(path, kwargs.get("config"), shapes)
            except Exception as exc:
                raise _single_file_error(model_str, exc, kwargs.get("config")) from exc
            if shapes is not None and cls.__name__ in _SD_FAMILY_CLASSES and not any(
                k.startswith("model.diffusion_model.") for k in shapes
            ):
                # e.g. diffusers-format weights flattened into one file: diffusers would fail per component.
                raise ModelLoadError(
                    f"'{model_str}' is not a Stable Diffusion checkpoint in the original single-file layout "
                    "(no 'model.diffusion_model.*' weights); load diffusers-format weights from their model folder"
                )
            try:
                pipe = cls.from_single_file(str(path), **dtype_kwargs(dtype), **kwargs)
            except Exception as exc:
                raise _single_file_error(model_str, exc, kwargs.get("config")) from exc
            if torch.device(device).type == "cpu":
                _own_unaligned_weights(pipe)
        elif path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(
                    f"'{model_str}' is not a diffusers model folder (no model_index.json); "
                    "pass a folder saved with save_pretrained, a hub id or a .safetensors file"
                )
            pipe = AutoPipelineForImage2Image.from_pretrained(str(path), **dtype_kwargs(dtype), **kwargs)
        else:
            pipe = _from_hub(model_str, dtype, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError, AttributeError) as exc:
        raise _friendly(model_str, exc) from exc
    except Exception as exc:  # HTTP client errors and friends
        raise _friendly(model_str, exc) from exc
    return pipe.to(device)


# families: a model and the extra pipelines its family declares ---------------------------------------
def model_index(model: str) -> Optional[dict[str, Any]]:
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
    device, dtype = resolve_device_dtype(device, torch_dtype)
    model = str(model)
    path = Path(model).expanduser()
    index = model_index(model) or {}
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
            pipe = _cache_then_hub(model, lambda **extra: cls.from_pretrained(model, **dtype_kwargs(dtype), **kw, **extra))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _friendly(model, exc) from exc
    return pipe.to(device)


def _substitutes(index: dict[str, Any], model: str) -> dict[str, Any]:
    """:func:`diffdiff.processors.substitutes`, its failures as one line."""
    try:
        return substitutes(index, model)
    except Exception as exc:  # a broken or missing processor folder
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"could not load the processor of '{model}': {first}") from exc


# --- issue 18 item 7: a UNet / transformer alone in one file, the rest from its base model ---------
#: Key prefixes of the parts a whole-pipeline checkpoint holds besides its denoiser (VAE, text encoders).
_PIPELINE_PART_PREFIXES = ("first_stage_model.", "vae.", "cond_stage_model.", "conditioner.", "text_encoders.")


def _base_index(base: str) -> dict[str, Any]:
    """The model_index.json of the base model (local folder, cache, then the hub)."""
    index = model_index(base)
    if index is not None:
        return index
    if Path(base).expanduser().exists() or base.startswith((".", "/", "~")):
        raise ModelLoadError(f"base model '{base}' is not a diffusers model folder (no model_index.json)")
    try:
        return dict(_cache_then_hub(base, lambda **extra: diffusers.DiffusionPipeline.load_config(base, **extra)))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise _friendly(base, exc) from exc


def load_component_file(path: str | os.PathLike[str], base: str, name: Optional[str] = None,
                        torch_dtype: Optional[torch.dtype] = None) -> tuple[str, Any]:
    """Load one model component (default: the base's transformer or UNet) from a single file.

    ``base`` (a diffusers folder or hub id) gives the component's class and config; diffusers'
    ``from_single_file`` converts an original-layout file (BFL's ``flux1-dev.safetensors``, an SD3
    MMDiT, an LDM UNet) or takes diffusers-layout weights as they are. Returns (name, module).
    """
    file, base = Path(path).expanduser(), str(base)
    if not file.is_file():
        raise ModelLoadError(f"component file '{path}' does not exist")
    try:
        index = _base_index(base)
    except ModelLoadError as exc:
        raise ModelLoadError(f"the base model for '{path}': {exc}") from exc
    components = [k for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[1] is not None]
    name = name or next((n for n in ("transformer", "unet", "prior") if n in components), None)
    if name is None or name not in components:
        raise ModelLoadError(f"base model '{base}' has no {name or 'transformer or UNet'} for '{path}' to replace "
                             f"(its components: {', '.join(components)})")
    cls = getattr(diffusers, index[name][1], None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.FromOriginalModelMixin)):
        raise ModelLoadError(f"diffusers cannot load a {index[name][1]} ({name} of '{base}') from a single file "
                             f"like '{path}'; save it as a diffusers folder instead")
    _checkpoint_shapes(file, str(path))  # a corrupt .safetensors fails here in one line

    def load(**extra: Any) -> Any:
        kw = dtype_kwargs(torch_dtype) if torch_dtype is not None else {}
        return cls.from_single_file(str(file), config=base, subfolder=name, **kw, **extra)

    try:
        module = load() if Path(base).expanduser().exists() else _cache_then_hub(base, load)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"'{path}' cannot be loaded as the {name} ({cls.__name__}) of '{base}': "
                             f"{_first_line(exc)}") from exc
    return name, module


def _denoiser_only(model: str, kw: dict[str, Any], dtype: torch.dtype) -> Optional[tuple[str, dict[str, Any]]]:
    """For a .safetensors file holding only a UNet / transformer: (base model, ``kw`` with it loaded).

    The base is ``config=`` (CLI: ``--model-config``): its other components, weights included, come
    from there, as diffusers documents for ``flux1-dev.safetensors``. None for any other model.
    """
    path = Path(model).expanduser()
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    shapes = _checkpoint_shapes(path, model) or {}
    if any(k.startswith(_PIPELINE_PART_PREFIXES) for k in shapes):
        return None
    rest = dict(kw)
    base = rest.pop("config", None)
    if base is None:
        raise ModelLoadError(f"'{model}' holds no VAE or text-encoder weights: if it is a transformer / UNet alone, "
                             "pass the base model it belongs to as config=<diffusers folder or hub id> "
                             "(CLI: --model-config)")
    checked = {"config": base}
    _single_file_kwargs(model, checked)
    base = checked["config"]
    name, module = load_component_file(path, str(base), torch_dtype=dtype)
    return str(base), {**rest, name: module}


def _component_files(model: str, index: dict[str, Any], kw: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Component arguments given as single files (``transformer="flux1-dev.safetensors"``), loaded."""
    out = dict(kw)
    for name, value in kw.items():
        if (isinstance(value, (str, os.PathLike)) and str(value).endswith(SINGLE_FILE_SUFFIXES)
                and isinstance(index.get(name), list)):
            out[name] = load_component_file(value, model, name, torch_dtype=dtype)[1]
    return out


def load_family(
    model: str,
    parts: Optional[dict[str, Optional[str]]] = None,
    device: Optional[str] = None,
    torch_dtype: Any = None,
    **kw: Any,
) -> tuple[Any, dict[str, Any]]:
    """Load a model and the extra pipelines its family needs; returns (pipe, loaded parts).

    ``parts`` maps part names (``refiner``, ``prior``, ``stage_2``, ``stage_3``) to models; a part
    the family declares with a default is loaded even when not given (Kandinsky's prior).
    """
    wanted = {k: v for k, v in (parts or {}).items() if v is not None}
    dtype = resolve_device_dtype(device, torch_dtype)[1]
    swapped = _denoiser_only(str(model), kw, dtype)
    if swapped is not None:  # a transformer / UNet file: the rest of the model comes from config=
        base, kw = swapped
        try:
            return load_family(base, parts, device=device, torch_dtype=torch_dtype, **kw)
        except ModelLoadError as exc:
            raise ModelLoadError(f"'{model}' holds only a transformer / UNet; loading the rest from '{base}' "
                                 f"failed: {exc}") from exc
    index = model_index(str(model)) or {}
    kw = _component_files(str(model), index, kw, dtype)
    subs = _substitutes(index, str(model))  # processors transformers cannot build here (no torchvision)
    kw = {**subs, **kw}
    direct = load_as_class(index.get("_class_name"))
    if direct is not None:
        pipe = load_as(getattr(diffusers, direct), str(model), device, torch_dtype, **kw)
    else:
        try:
            pipe = load_pipeline(model, device=device, torch_dtype=torch_dtype, **kw)
        except ModelLoadError:
            if not index.get("_class_name"):
                raise
            # A real diffusers model with no img2img form (PixArt, Sana...): the own-noise family drives
            # it when it takes latents=; otherwise adapter_class says which families are supported. The
            # caller's components (HiDream's separately loaded Llama) go along.
            pipe = load_as(diffusers.DiffusionPipeline, str(model), device, torch_dtype, **kw)
    cls = adapter_class(as_img2img(pipe))
    check_parts(cls, wanted)
    loaded: dict[str, Any] = {}
    for name, spec in cls.extra_parts.items():
        source = wanted.get(name) or cls.default_part(name, pipe)
        if source is None:
            continue
        if spec.pipeline is None:
            loaded[name] = load_pipeline(source, device=device, torch_dtype=torch_dtype)
            continue
        shared = {k: getattr(pipe, k) for k in spec.share if getattr(pipe, k, None) is not None}
        loaded[name] = load_as(getattr(diffusers, spec.pipeline), str(source), device, torch_dtype, **shared)
    return pipe, loaded
