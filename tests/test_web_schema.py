"""The REST API and its OpenAPI schema agree: schemathesis fuzzes the app in-process from its own schema.

A client generated from ``/openapi.json`` is the user here: what the schema allows must work and
what it forbids must be refused with a declared 4xx. Schemathesis (its ASGI integration: no
network) runs every operation with a fixed seed and a bounded number of examples through all its
checks: no 5xx, status codes, content types, headers and bodies as declared, schema-valid
requests accepted (2xx), schema-invalid ones refused, undeclared methods 405 with ``Allow``.

What a JSON schema cannot tell a generator (file fields carry real images of matching aspect
ratios; a fan's ``min_strength <= max_strength``; multipart text undoing a "type change") lives
in ``tests/schemathesis_hooks.py``, which a command-line ``st run`` against a live server can load
too. New fields join the fuzz by being declared.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("gradio")
schemathesis = pytest.importorskip("schemathesis")

# Registers the image strategies and the two filters (shared with a command-line `st run`).
import schemathesis_hooks as hooks  # noqa: E402
from diffdiff import Editor  # noqa: E402
from diffdiff.web import create_app  # noqa: E402

#: Fixed seed, bounded examples: the same cases on every run, about a minute on two cores.
SEED = 16
MAX_EXAMPLES = 25
MAX_STEPS = 4  # the fuzzed server's steps limit: every request stays cheap on the tiny model


#: A multipart ``pipeline_kwargs`` part with a non-empty value (the field the fuzz must reach).
PIPELINE_KWARGS_PART = re.compile(rb'name="pipeline_kwargs"\r\n(?:[^\r\n]+\r\n)*\r\n(?!\r\n--)')


@pytest.fixture(scope="module")
def fuzz_app(sd_editor: Editor) -> hooks.Recorder:
    # The UI is mounted as `diffdiff serve` does: a mount at "/" must not swallow /api's 405s.
    side = hooks.MAX_SIDE
    return hooks.Recorder(create_app(sd_editor, max_pixels=side * side, queue_size=2, max_steps=MAX_STEPS))


@pytest.fixture(scope="module")
def api_schema(fuzz_app: hooks.Recorder) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},  # no crash replays from earlier runs: the same cases every time
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        "checks": {"enabled": True},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_agrees_with_the_schema(case: Any) -> None:
    case.call_and_validate()


@pytest.fixture(scope="module")
def lora_app(tiny_sd_path: Any, tmp_path_factory: pytest.TempPathFactory) -> hooks.Recorder:
    """A server whose model has two LoRAs loaded: /api/edit and /api/fan then declare the ``lora`` field."""
    pytest.importorskip("peft")
    from diffdiff.testing_addons import save_random_lora

    folder = tmp_path_factory.mktemp("fuzz-loras")
    style, ink = folder / "style.safetensors", folder / "ink-v2.safetensors"
    style.write_bytes(save_random_lora(tiny_sd_path, folder / "a", seed=0).read_bytes())
    ink.write_bytes(save_random_lora(tiny_sd_path, folder / "b", seed=1).read_bytes())
    editor = Editor.from_pretrained(tiny_sd_path, lora=[f"{style}:0.8", str(ink)], progress=False)
    side = hooks.MAX_SIDE
    return hooks.Recorder(create_app(editor, ui=False, max_pixels=side * side, queue_size=2, max_steps=MAX_STEPS))


@pytest.fixture(scope="module")
def lora_schema(lora_app: hooks.Recorder) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},
        "generation": {"max-examples": LORA_EXAMPLES, "database": "none", "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        "checks": {"enabled": True},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", lora_app, config=config)


LORA_EXAMPLES = 40
lora_fuzz = schemathesis.pytest.from_fixture("lora_schema")


@lora_fuzz.parametrize()
def test_edit_with_loras_agrees_with_the_schema(case: Any) -> None:
    """Every operation of a server with LoRAs loaded, whose /api/edit and /api/fan have the ``lora`` field (a
    pattern over the loaded names)."""
    case.call_and_validate()


def test_the_lora_fuzz_sent_lora_scales(lora_app: hooks.Recorder) -> None:
    """Runs after the LoRA fuzz: /api/edit and /api/fan were answered 200 and 422, with no 5xx."""
    if not lora_app.seen:
        pytest.skip("the LoRA fuzz did not run in this session (deselected)")
    for path in ("/api/edit", "/api/fan"):
        statuses = {st for (method, p, st) in lora_app.seen if (method, p) == ("POST", path)}
        assert {200, 422} <= statuses, (path, lora_app.seen)
    assert not any(st >= 500 for (_, _, st) in lora_app.seen), lora_app.seen


def test_the_fuzz_covers_every_operation(api_schema: Any) -> None:
    """The fuzz runs over every operation in the schema, the five of today among them (a new
    endpoint or field joins the fuzz by being declared; a new file field declares its media type
    with ``openapi_extra=_files(...)`` in diffdiff.web.api so the fuzz sends it images)."""
    ops = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert {("GET", "/api/health"), ("POST", "/api/edit"), ("POST", "/api/fan"),
            ("POST", "/api/auto-map"), ("POST", "/api/diffedit")} <= ops
    assert all(path.startswith("/api/") for _, path in ops)


def test_image_strategy_makes_images_the_server_decodes() -> None:
    """The generator's images are real: Pillow reads each format back at its size."""
    for fmt in hooks.FORMATS.values():
        for mode in ("L", "RGB", "RGBA"):
            img = Image.open(io.BytesIO(hooks.encode(17, mode, 3, fmt)))
            img.load()
            assert img.size == (17, 17) and img.format == fmt


def test_wire_filter_exempts_only_text_that_is_valid_as_sent() -> None:
    """The failure filter's rule: sent text that spells a valid value is not a negative case."""
    assert hooks.text_is_valid("5", {"type": "string"})  # an int "mutation" of a string field
    assert hooks.text_is_valid("3", {"type": "number", "minimum": 0})  # an int for a number
    assert not hooks.text_is_valid("-3", {"type": "number", "minimum": 0})
    assert not hooks.text_is_valid("abc", {"type": "integer"})
    assert not hooks.text_is_valid("x" * 11, {"type": "string", "maxLength": 10})


def test_the_fuzz_reached_the_model_and_the_refusals(fuzz_app: hooks.Recorder) -> None:
    """Runs after the fuzz: every POST operation answered 200 (the model ran) and 422, and
    undeclared methods were tried and answered 405, so the checks above saw real traffic."""
    if not fuzz_app.seen:
        pytest.skip("the fuzz test did not run in this session (deselected)")
    statuses: dict[tuple[str, str], set[int]] = {}
    for (method, path, status), _ in fuzz_app.seen.items():
        statuses.setdefault((method, path), set()).add(status)
    for path in ("/api/edit", "/api/fan", "/api/auto-map", "/api/diffedit"):
        assert {200, 422} <= statuses.get(("POST", path), set()), (path, statuses.get(("POST", path)))
    assert 200 in statuses.get(("GET", "/api/health"), set())
    assert any(m not in ("GET", "POST") and 405 in s for (m, p), s in statuses.items() if p.startswith("/api/")), statuses
    assert not any(st >= 500 for (_, _, st) in fuzz_app.seen), fuzz_app.seen


def test_the_fuzz_sent_pipeline_kwargs(fuzz_app: hooks.Recorder) -> None:
    """Runs after the fuzz: both operations were sent ``pipeline_kwargs`` values, schema objects reached
    the model (200) and wrong ones were refused (422), never a 5xx. (Which operation drew the 200s
    varies with what else ran first; the explicit tests in test_web_pipeline_kwargs.py cover both.)"""
    if not fuzz_app.seen:
        pytest.skip("the fuzz test did not run in this session (deselected)")
    sent = fuzz_app.sent(PIPELINE_KWARGS_PART)
    assert {p for (p, _) in sent} >= {"/api/edit", "/api/fan"}, sent
    assert {200, 422} <= {st for (_, st) in sent}, sent
    assert not any(st >= 500 for (_, st) in sent), sent
