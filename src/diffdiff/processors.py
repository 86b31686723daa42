"""Multimodal processors whose video half needs torchvision, loaded without it (Qwen-Image-Edit).

Qwen-Image-Edit and Edit-Plus have a ``processor`` component, transformers' ``Qwen2VLProcessor``:
an image processor and a tokenizer (all the edit pipelines call it with: text and images) plus a
video processor. In transformers 5 the video processors exist only with torchvision, and the
processor's constructor checks every part's class, so without torchvision it cannot be built at
all and diffusers cannot load the model. This module owns the way round: :func:`image_only` is the
same processor class without the video part (a subclass: its call, its image-token expansion, its
saving are the parent's), and :func:`substitutes` loads every such component of a model folder that
way, for :mod:`diffdiff.loading` to hand to ``from_pretrained``. Nothing changes where torchvision
is installed.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import transformers
from transformers.processing_utils import ProcessorMixin


def video_processors_available() -> bool:
    """True when transformers can build video processors (torchvision is installed)."""
    return importlib.util.find_spec("torchvision") is not None


def needs_video_processor(cls: Any) -> bool:
    """A transformers processor class that takes images, text and a video processor."""
    if not (isinstance(cls, type) and issubclass(cls, ProcessorMixin)):
        return False
    parts = cls.get_attributes()
    return "video_processor" in parts and "image_processor" in parts and "tokenizer" in parts


@functools.cache
def image_only(cls: type) -> type:
    """``cls`` (a processor with a video part) as a subclass made of its image processor and tokenizer.

    transformers reads a processor's parts from its ``__init__`` signature, so this one has two;
    the parent's ``__init__`` runs unchanged, with no video processor."""
    if not needs_video_processor(cls):
        raise TypeError(f"{cls.__name__} is not a processor with image, text and video parts")

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)  # type: ignore[misc]

    return type(cls.__name__, (cls,), {
        "__init__": __init__, "__module__": __name__, "__qualname__": cls.__name__,
        "__doc__": f"{cls.__name__} without its video processor (built without torchvision).",
    })


def substitutes(index: dict[str, Any], model: str) -> dict[str, Any]:
    """Components of a ``model_index.json`` that need a video processor, loaded image-only from
    ``model`` (folder or hub id), by component name; empty where torchvision is installed."""
    if video_processors_available():
        return {}
    out: dict[str, Any] = {}
    for name, entry in index.items():
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers"):
            continue
        if not str(entry[1]).endswith("Processor"):
            continue  # tokenizers, models: never a video part
        cls = getattr(transformers, str(entry[1]), None)
        if needs_video_processor(cls):
            out[name] = image_only(cls).from_pretrained(model, subfolder=name)
    return out
