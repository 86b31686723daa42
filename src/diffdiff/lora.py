"""LoRA weights on a loaded pipeline: ``PATH_OR_ID[:SCALE]`` specs, diffusers' loader, fit checks.

Everything goes through diffusers' own ``load_lora_weights`` (diffusers, Kohya and A1111
single-file LoRAs; peft does the work underneath) and ``set_adapters`` for the scales. This module
only parses the specs, names one adapter per LoRA, turns loader failures into one line naming the
file, refuses a LoRA none of whose weights fit the model (diffusers merely warns then), and
describes what was loaded for the PNG metadata. It also owns per-call scales of loaded LoRAs
(``NAME:SCALE`` lists, :func:`parse_scale_overrides`; :func:`scaled_loras` sets them with
``set_adapters`` for one call and restores the load-time scales after it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
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


# per-call scales of the loaded LoRAs ---------------------------------------------------------------
#: The per-call scale range: beyond it a LoRA only saturates the image.
MAX_CALL_SCALE = 10.0
#: A per-call scale as text: a decimal number in [-10, 10] (what :data:`MAX_CALL_SCALE` allows).
SCALE_PATTERN = r"-?(?:10(?:\.0+)?|[0-9](?:\.[0-9]+)?)"
#: Characters that cannot be in a name of a ``NAME:SCALE`` list.
_SEPARATORS = re.compile(r"[,:\s]")


def lora_names(records: list[dict[str, Any]]) -> dict[str, int]:
    """Name -> index of each loaded LoRA (records of :func:`load_loras`), for ``NAME:SCALE`` lists.

    A LoRA is named by what its record says (its file name, or its hub id) and by that file name
    without its extension; a name two LoRAs share, or one with ``,``, ``:`` or whitespace, is left out.
    """
    seen: dict[str, set[int]] = {}
    for index, record in enumerate(records):
        name = str(record["lora"])
        for alias in {name, Path(name).stem if Path(name).suffix else name}:
            if alias and not _SEPARATORS.search(alias):
                seen.setdefault(alias, set()).add(index)
    return {alias: next(iter(ids)) for alias, ids in sorted(seen.items()) if len(ids) == 1}


def scale_list_pattern(names: list[str]) -> str:
    """The regular expression of a ``NAME:SCALE[,NAME:SCALE...]`` list over ``names`` (or empty)."""
    # Only the metacharacters are escaped: the pattern is ECMA-262 too (JSON Schema's dialect).
    alternatives = "|".join(re.sub(r"[\\.^$*+?()\[\]{}|]", r"\\\g<0>", n) for n in sorted(names, key=len, reverse=True))
    item = f"(?:{alternatives}):{SCALE_PATTERN}"
    return f"^(?:{item}(?:,{item})*)?$"


def parse_scale_overrides(values: list[str], records: list[dict[str, Any]]) -> dict[int, float]:
    """``["style:0.5", "a:1,b:0"]`` -> {LoRA index: scale}; a LoRA named again takes its last scale.

    Each value is a comma-separated ``NAME:SCALE`` list (empty: nothing); names are those of
    :func:`lora_names`. Anything else is one line naming the item and what was wrong.
    """
    names = lora_names(records)
    known = ", ".join(names) or "none"
    out: dict[int, float] = {}
    for value in values:
        if value == "":
            continue
        for item in value.split(","):
            name, sep, scale = item.rpartition(":")
            if not sep or not name:
                raise DiffDiffError(f"lora: {item!r} is not NAME:SCALE (loaded LoRAs: {known})")
            if name not in names:
                raise DiffDiffError(f"lora: no LoRA named {name!r} is loaded (loaded LoRAs: {known})")
            if not re.fullmatch(SCALE_PATTERN, scale):
                raise DiffDiffError(f"lora: the scale of {name!r} must be a decimal number from "
                                    f"-{MAX_CALL_SCALE:g} to {MAX_CALL_SCALE:g}, got {scale!r}")
            out[names[name]] = float(scale)
    return out


def with_scales(records: list[dict[str, Any]], overrides: dict[int, float]) -> list[dict[str, Any]]:
    """The metadata records of the loaded LoRAs with the scales of one call."""
    return [{**r, "scale": overrides.get(i, r["scale"])} for i, r in enumerate(records)]


@contextmanager
def scaled_loras(pipe: Any, records: list[dict[str, Any]], overrides: dict[int, float]) -> Iterator[None]:
    """Run the body with the loaded LoRAs at ``overrides``' scales; their load-time scales come back after.

    The adapters are those :func:`load_loras` named (``lora_<index>``), set with diffusers'
    ``set_adapters``; the caller holds the model for the call (the web service's lock does).
    """
    if not overrides:
        yield
        return
    names = [f"lora_{i}" for i in range(len(records))]
    pipe.set_adapters(names, adapter_weights=[r["scale"] for r in with_scales(records, overrides)])
    try:
        yield
    finally:
        pipe.set_adapters(names, adapter_weights=[float(r["scale"]) for r in records])
