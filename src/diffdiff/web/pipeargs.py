"""The REST API's ``pipeline_kwargs`` field: the JSON object's schema for the served pipeline, and its check.

The field carries extra arguments for the diffusers call as a JSON object in a text part, as the
CLI's ``--pipeline-kwargs`` does; :func:`diffdiff.request.pipeline_kwargs_from_json` parses it
(bad JSON, a non-object, a name diffdiff sets itself: one line). For a served model this module
adds what the pipeline's signature tells: the names are the arguments its ``__call__`` takes by
name, less those diffdiff sets and those whose annotated type JSON cannot carry (tensors, images,
generators, callables), and each value must be of its annotation's type (strictly, as JSON Schema reads
it: "5" is no integer, 2.0 is one). The schema the API
publishes and the check the server runs are built from the same pydantic adapters, so the two
agree. Values the type allows but the pipeline refuses when it runs (a ``clip_skip`` beyond the
text encoder's layers) only the pipeline knows: :class:`diffdiff.errors.PipelineArgumentError`
reports them as the caller's input (422).
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any, Optional

from pydantic import TypeAdapter, ValidationError

from ..errors import DiffDiffError
from ..pipeinfo import call_parameters, named_parameters
from ..request import OWNED_PIPELINE_ARGUMENTS, pipeline_kwargs_from_json

FIELD = "pipeline_kwargs"
DESCRIPTION = ("Extra arguments for the diffusers call, as a JSON object (as the CLI's --pipeline-kwargs), e.g. "
               '{"clip_skip": 1}; names: the served pipeline\'s call arguments diffdiff does not set itself, whose '
               "values JSON can carry; a value the pipeline refuses when it runs is a 422")


def _hints(pipe: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(type(pipe).__call__)
    except Exception:  # unresolvable annotations: every value then takes any JSON
        return {}


def json_arguments(pipe: Any) -> dict[str, TypeAdapter[Any]]:
    """The arguments of ``pipe.__call__`` a JSON client may set, each with its value's pydantic adapter."""
    hints = _hints(pipe)
    params = call_parameters(pipe)
    out: dict[str, TypeAdapter[Any]] = {}
    for name in named_parameters(pipe):
        if name in OWNED_PIPELINE_ARGUMENTS:
            continue
        annotation = params[name].annotation
        hint = hints.get(name, Any if annotation is inspect.Parameter.empty else annotation)
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(hint)
            schema = adapter.json_schema()
        except Exception:  # tensors, images, generators, callables: no JSON form
            continue
        if "$defs" not in schema and "$ref" not in json.dumps(schema):  # self-contained schemas only
            out[name] = adapter
    return out


def _integral(value: Any) -> Any:
    """``value`` with every float that is a whole number (2.0) as an int, in lists and objects too."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _validate(adapter: TypeAdapter[Any], value: Any) -> Any:
    """``value`` checked as its JSON text, strictly (no "5" for 5): what the published schema allows.

    JSON Schema counts 2.0 as an integer and strict pydantic does not: a value refused as it is is
    checked again with its whole-number floats as ints, so an ``int`` argument takes 2.0 (as 2) while
    a float argument keeps the 2.0 it was sent.
    """
    text = json.dumps(value)
    try:
        return adapter.validate_json(text, strict=True)
    except ValidationError as exc:
        whole = json.dumps(_integral(value))
        if whole == text:
            raise
        try:
            return adapter.validate_json(whole, strict=True)
        except ValidationError:
            raise exc from None


class PipelineArguments:
    """The ``pipeline_kwargs`` field of one server: its JSON schema and its check (``pipe``: the served
    pipeline; None while a lazily loaded model is not loaded, when only the JSON-object rule applies
    here and the names are checked against the pipeline once it is)."""

    def __init__(self, pipe: Optional[Any]) -> None:
        self.pipeline = type(pipe).__name__ if pipe is not None else None
        self.adapters = json_arguments(pipe) if pipe is not None else None
        self.all_names = set(named_parameters(pipe)) if pipe is not None else set()

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the object (the field's value once parsed)."""
        if self.adapters is None:
            return {"type": "object", "propertyNames": {"not": {"enum": sorted(OWNED_PIPELINE_ARGUMENTS)}}}
        props = {name: adapter.json_schema() for name, adapter in sorted(self.adapters.items())}
        return {"type": "object", "properties": props, "additionalProperties": False}

    def parse(self, text: Optional[str]) -> dict[str, Any]:
        """The field's text as call arguments (empty: none), or one clear :class:`DiffDiffError` line."""
        kw = pipeline_kwargs_from_json(text, FIELD)
        if self.adapters is None or not kw:
            return kw
        out: dict[str, Any] = {}
        for name, value in kw.items():
            adapter = self.adapters.get(name)
            if adapter is None:
                offered = ", ".join(sorted(self.adapters)) or "none"
                why = ("takes a value JSON cannot carry" if name in self.all_names
                       else f"is not an argument of {self.pipeline}")
                raise DiffDiffError(f"{FIELD}: {name!r} {why}; this server's model takes: {offered}")
            try:
                out[name] = _validate(adapter, value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(x) for x in (name, *first.get("loc", ())))
                raise DiffDiffError(f"{FIELD}.{where}: {first.get('msg', 'invalid value')}") from None
        return out
