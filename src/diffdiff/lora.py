"""LoRA weights on a loaded pipeline: ``PATH_OR_ID[:SCALE]`` specs, diffusers' loader, fit checks.

Everything goes through diffusers' own ``load_lora_weights`` (diffusers, Kohya and A1111
single-file LoRAs; peft does the work underneath) and ``set_adapters`` for the scales. This module
only parses the specs, names one adapter per LoRA, turns loader failures into one line naming the
file, refuses a LoRA none of whose weights fit the model (diffusers merely warns then), and
describes what was loaded for the PNG metadata.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import DiffDiffError, ModelLoadError
from .io import file_sha256
from .loading import _cache_then_hub

LoraSpec = tuple[str, float]


def parse_lora(spec: str | os.PathLike[str] | tuple[Any, Any]) -> LoraSpec:
    """``"file.safetensors:0.8"`` -> ``("file.safetensors", 0.8)``; no ``:SCALE`` means 1.0.

    A tuple ``(path, scale)`` is accepted as is. Only a trailing ``:number`` is a scale, so
    ``C:/loras/x.safetensors`` and hub ids keep their colons and slashes.
    """
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise DiffDiffError(f"a LoRA is (path, scale), got {spec!r}")
        name, scale = str(spec[0]), spec[1]
    else:
        name, scale = str(spec), 1.0
        head, sep, tail = name.rpartition(":")
        if sep and head and "/" not in tail and "\\" not in tail:
            try:
                scale = float(tail)
            except ValueError as exc:
                if not Path(name).exists():
                    raise DiffDiffError(f"LoRA '{name}': the scale after ':' must be a number, got {tail!r}") from exc
            else:
                name = head
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise DiffDiffError(f"LoRA '{name}': scale must be a finite number, got {scale!r}")
    if not name:
        raise DiffDiffError("empty LoRA name; pass PATH_OR_ID[:SCALE]")
    return name, float(scale)


def _loaded(pipe: Any, adapter: str) -> list[str]:
    """Components of ``pipe`` that received ``adapter``."""
    try:
        listed = pipe.get_list_adapters()
    except Exception:  # no peft-backed component at all
        return []
    return sorted(component for component, names in listed.items() if adapter in names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_loras(pipe: Any, specs: list[Any]) -> list[dict[str, Any]]:
    """Load every LoRA in ``specs`` onto ``pipe`` with its scale; returns their metadata records."""
    if not specs:
        return []
    if not hasattr(pipe, "load_lora_weights"):
        raise DiffDiffError(f"{type(pipe).__name__} does not take LoRA weights")
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise DiffDiffError('LoRA loading needs peft: pip install "diffdiff[lora]"')
    parsed = [parse_lora(s) for s in specs]
    names, scales, records = [], [], []
    for index, (name, scale) in enumerate(parsed):
        adapter = f"lora_{index}"
        path = Path(name).expanduser()
        local = path.exists()
        if not local and (name.startswith((".", "/", "~")) or path.suffix in (".safetensors", ".bin", ".pt", ".ckpt")):
            raise ModelLoadError(f"LoRA file '{name}' does not exist")
        try:
            if local:
                pipe.load_lora_weights(str(path), adapter_name=adapter)
            else:  # a hub id: the local cache first
                _cache_then_hub(name, lambda n=name, a=adapter, **extra: pipe.load_lora_weights(n, adapter_name=a, **extra))
        except ModelLoadError:
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}".lower()
            if "size mismatch" in text:
                raise DiffDiffError(f"LoRA '{name}' does not fit this model (its weight shapes are for another "
                                    "model family or size)") from exc
            raise ModelLoadError(f"LoRA '{name}' could not be loaded: {_first_line(exc)}") from exc
        components = _loaded(pipe, adapter)
        if not components:
            raise DiffDiffError(f"LoRA '{name}' does not fit this model: none of its weights match the model's layers")
        names.append(adapter)
        scales.append(scale)
        record: dict[str, Any] = {"lora": path.name if local else name, "scale": scale, "components": components}
        if local and path.is_file():
            record["sha256"] = file_sha256(path)
        records.append(record)
    pipe.set_adapters(names, adapter_weights=scales)
    return records
