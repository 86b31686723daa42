"""Performance plumbing (diffdiff.perf): automatic VAE tiling, one VAE encode per edit, SDPA, benchmark smoke."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffdiff import Editor, perf
from diffdiff.request import EditRequest
from diffdiff.testing import gradient_map, sample_image, tiny_vae

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


def test_tiling_switches_on_above_threshold_and_back_off() -> None:
    vae = tiny_vae()
    assert vae.tile_sample_min_size == 64  # the tiny config's own tile: far too small for big images
    assert not perf.configure_vae(vae, 1024, 1024, threshold=1536 * 1536)
    assert not vae.use_tiling
    assert perf.configure_vae(vae, 2048, 2048, threshold=1536 * 1536)
    assert vae.use_tiling and vae.use_slicing
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (perf.MIN_TILE, perf.MIN_TILE // 8)
    assert perf.configure_vae(vae, 4096, 4096)  # default threshold; idempotent
    # Small again: our own setting is undone, so small edits stay reproducible.
    assert not perf.configure_vae(vae, 512, 512)
    assert not vae.use_tiling and not vae.use_slicing and vae.tile_sample_min_size == 64
    # A user's own tiling is never switched off.
    vae.enable_tiling()
    assert perf.configure_vae(vae, 64, 64)
    assert vae.use_tiling
    assert not perf.configure_vae(None, 9999, 9999)  # pixel-space models have no VAE


def test_default_threshold_covers_sdxl_native() -> None:
    vae = tiny_vae()
    assert not perf.configure_vae(vae, 1024, 1024) and not perf.configure_vae(vae, 1536, 1024)
    assert perf.configure_vae(vae, 2048, 2048)


def test_edit_above_threshold_runs_tiled(sd_editor: Editor, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaled-down stand-in for a 4096 px edit: threshold and tile lowered so a 192 px image really
    # goes through the tiled encode/decode inside Editor.edit.
    monkeypatch.setattr(perf, "AUTO_TILING_PIXELS", 128 * 128)
    monkeypatch.setattr(perf, "MIN_TILE", 64)
    vae = sd_editor.pipe.vae
    calls = {"tiled": 0}
    real_tiled = vae._tiled_encode

    def spy(x):  # type: ignore[no-untyped-def]
        calls["tiled"] += 1
        return real_tiled(x)

    monkeypatch.setattr(vae, "_tiled_encode", spy)
    try:
        img = sample_image(192, 192)
        out = sd_editor.edit(img, gradient_map(192, 192), "a cat", num_inference_steps=2, seed=0)[0]
        assert vae.use_tiling and calls["tiled"] == 1
        assert out.size == (192, 192)
        # Below the threshold again, the next edit is untiled.
        sd_editor.edit(sample_image(64, 64), gradient_map(64, 64), "a cat", num_inference_steps=2, seed=0)
        assert not vae.use_tiling and calls["tiled"] == 1
    finally:
        perf.configure_vae(vae, 0, 0)


@pytest.mark.parametrize("editor_name", ["sd_editor", "sdxl_editor"])
def test_exactly_one_vae_encode_per_edit(editor_name: str, request: pytest.FixtureRequest) -> None:
    ed: Editor = request.getfixturevalue(editor_name)
    counter = perf.count_vae_encodes(ed.pipe)
    try:
        ed.edit(sample_image(64, 64), gradient_map(64, 64), "a cat", num_inference_steps=3, seed=1)
        assert counter["encode"] == 1
        ed.edit(sample_image(64, 64), gradient_map(64, 64), "a cat", num_inference_steps=3, seed=1, num_images=2)
        assert counter["encode"] == 2  # a batch of variations still encodes the image once
    finally:
        perf.restore_vae_encode(ed.pipe)
    assert "encode" not in ed.pipe.vae.__dict__


def test_attention_is_sdpa(sd_editor: Editor) -> None:
    assert perf.attention_backends(sd_editor.pipe) == {"AttnProcessor2_0"}


def test_benchmark_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark end to end at toy sizes (in-process; memory children are real subprocesses)."""
    import importlib.util

    import torch

    monkeypatch.setenv("DIFFDIFF_BENCH_THREADS", str(torch.get_num_threads()))
    spec = importlib.util.spec_from_file_location("diffdiff_bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "RESULTS.md"
    # A section another script owns (benchmarks/big_images.py) survives the rewrite.
    out.write_text("# old table\n\n## Big images\n\n| image | time |\n| 4096x4096 | 49 s |\n")
    assert bench.main(["--smoke", "--output", str(out)]) == 0
    assert "## Big images" in out.read_text() and "| 4096x4096 | 49 s |" in out.read_text()
    assert "# old table" not in out.read_text()
    text = out.read_text()
    for needle in ("edit / img2img", "same model calls", "our code", "fan / k edits", "skip_frozen edit / img2img",
                   "crop / full", "peak memory", "GPU", "torch "):
        assert needle in text, needle
    ratios = [float(x) for x in _ratio_cells(text)]
    assert len(ratios) == 7 and all(np.isfinite(ratios)) and all(r > 0 for r in ratios)


def _ratio_cells(text: str) -> list[str]:
    cells = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) >= 5 and parts[-2].replace(".", "", 1).isdigit():
            cells.append(parts[-2])
    return cells


def test_edit_runs_exactly_the_model_calls_of_img2img(sd_editor: Editor) -> None:
    """The floor claim: a change-map edit adds no network evaluation to plain img2img (same UNet,
    VAE encode/decode and text-encoder calls), with or without a graded map."""
    import torch

    img, cmap = sample_image(64, 64, seed=1), gradient_map(64, 64)

    def calls(fn: Any) -> dict[str, int]:
        counts: dict[str, int] = {}
        pipe = sd_editor.pipe
        parts = {"unet": pipe.unet, "vae.encoder": pipe.vae.encoder, "vae.decoder": pipe.vae.decoder,
                 "text_encoder": pipe.text_encoder}
        handles = [m.register_forward_hook(lambda *_, k=k: counts.__setitem__(k, counts.get(k, 0) + 1))
                   for k, m in parts.items()]
        try:
            fn()
        finally:
            for h in handles:
                h.remove()
        return counts

    def plain() -> None:
        kw = sd_editor.adapter.call_kwargs(img, EditRequest("a fox", num_inference_steps=5), torch.Generator().manual_seed(3), (64, 64))
        with torch.inference_mode():
            sd_editor.pipe(**kw, output_type="pil")

    edit_calls = calls(lambda: sd_editor.edit(img, cmap, "a fox", num_inference_steps=5, seed=3))
    assert edit_calls == calls(plain)
    assert edit_calls["unet"] == 5 and edit_calls["vae.encoder"] == 1 and edit_calls["vae.decoder"] == 1


def test_loading_uses_the_current_dtype_argument(tiny_sd_path: Path) -> None:
    """diffusers deprecates ``torch_dtype`` (a warning on every load); we pass ``dtype`` where it exists."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Editor.from_pretrained(tiny_sd_path, progress=False)
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
