"""Reading a diffusers pipeline: what its ``__call__`` accepts (cached) and its img2img sibling.

Families, loading and the editor all ask these questions; this module is their one home.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from .errors import DiffDiffError

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


def accepted_kwargs(pipe: Any, kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` without the arguments ``pipe.__call__`` does not take (e.g. negative prompts on Flux)."""
    params = call_parameters(pipe)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kw
    return {k: v for k, v in kw.items() if k in params}


def named_parameters(pipe: Any) -> list[str]:
    """The arguments ``pipe.__call__`` takes by name (not ``self``, ``*args`` or ``**kwargs``)."""
    try:
        params = call_parameters(pipe)
    except (TypeError, ValueError):
        return []
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)
    return [n for n, p in params.items() if n != "self" and p.kind not in skip]


def check_call_arguments(pipe: Any, kw: Mapping[str, Any], name: str = "pipeline_kwargs") -> None:
    """A clear error for a key of ``kw`` that ``pipe.__call__`` does not take by name.

    A ``**kwargs`` catch-all does not count: diffusers pipelines use it for deprecated arguments
    and drop anything else silently, so an unknown name would be ignored without a word.
    """
    known = named_parameters(pipe)
    unknown = sorted(set(kw) - set(known))
    if unknown and known:
        raise DiffDiffError(f"{name}: {type(pipe).__name__} takes no argument {', '.join(repr(k) for k in unknown)}")


def default_argument(pipe: Any, name: str) -> Any:
    """The default of ``pipe.__call__``'s argument ``name`` (None when it has none)."""
    param = call_parameters(pipe).get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def as_img2img(pipe: Any) -> Any:
    """Accept a text-to-image pipeline too, by switching to its img2img sibling (shared weights)."""
    if "strength" in call_parameter_names(pipe):
        return pipe
    try:
        from diffusers import AutoPipelineForImage2Image

        return AutoPipelineForImage2Image.from_pipe(pipe)
    except Exception:  # unsupported: the family registry reports it clearly
        return pipe
