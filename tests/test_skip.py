"""skip_frozen (issue #7): the denoiser runs only where pixels are free; frozen ones get the exact fill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from typer.testing import CliRunner

from diffdiff import Editor, read_metadata
from diffdiff.changemap import to_latent_map
from diffdiff.cli import app
from diffdiff.skip import exact_prediction, plan_step
from diffdiff.testing import sample_image


# ------------------------------------------------------------------------------ the exact fill
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_exact_prediction_steps_ddim_from_reference_to_reference(kind: str) -> None:
    # Independent check through diffusers' own DDIM update: feeding the exact prediction for a
    # noised latent must land exactly on the same clean latent noised to the next timestep.
    sched = DDIMScheduler(prediction_type=kind, beta_schedule="scaled_linear", clip_sample=False)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t, t_next in zip(sched.timesteps[:-1], sched.timesteps[1:]):
        x_t = sched.add_noise(clean, noise, t.reshape(1))
        pred = exact_prediction(kind, clean, noise, t, sched)
        x_next = sched.step(pred, t, x_t).prev_sample
        torch.testing.assert_close(x_next, sched.add_noise(clean, noise, t_next.reshape(1)), atol=2e-5, rtol=1e-5)


def test_exact_prediction_steps_flow_matching_from_reference_to_reference() -> None:
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    g = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    x = sched.scale_noise(clean, sched.timesteps[:1], noise)
    for t, t_next in zip(sched.timesteps[:-1], sched.timesteps[1:]):
        x = sched.step(exact_prediction("flow", clean, noise, t, sched), t, x).prev_sample
        torch.testing.assert_close(x, sched.scale_noise(clean, t_next.reshape(1), noise), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ plans
def test_plan_skips_crops_and_runs_full() -> None:
    change = torch.zeros(1, 1, 32, 40)
    change[..., 10:12, 36:39] = 1.0  # free from blend 1 on
    change[..., 20, 5] = 0.5  # free from blend 6 of 10 on
    assert plan_step(change * 0.5, 1, 10, pad=2, multiple=4, crop=True) == "skip"  # max 0.5: nothing free yet
    box = plan_step(change, 1, 10, pad=2, multiple=4, crop=True)
    y0, y1, x0, x1 = box  # type: ignore[misc]
    assert y0 <= 10 - 2 and y1 >= 12 + 2 and x0 <= 36 - 2 and x1 == 40  # padded, clamped at the edge
    assert (x0, x1) == (32, 40)  # 6 padded cells rounded up to 8, grown inwards from the edge
    assert (y1 - y0) % 4 == 0 and (x1 - x0) % 4 == 0 and 0 <= y0 and y1 <= 32
    later = plan_step(change, 6, 10, pad=2, multiple=4, crop=True)
    assert later == "full" or later[2] <= 5 - 2  # type: ignore[index]  # grew to take the second spot
    assert plan_step(torch.ones(1, 1, 32, 40), 1, 10, pad=2, multiple=4, crop=True) == "full"
    assert plan_step(change, 1, 10, pad=2, multiple=4, crop=False) == "full"  # transformers: no crops


# ----------------------------------------------------------------------- a pointwise stand-in
class PointwiseUNet(torch.nn.Module):
    """A stand-in UNet whose output at a position depends only on the input there (and t, prompt).

    With no spatial context a crop cannot change any prediction, so an edit with ``skip_frozen``
    must equal the full-frame edit wherever the map lets pixels change: any mistake in which step
    frees which pixels, or where a crop goes back, shows up as a difference.
    """

    def __init__(self, real: Any) -> None:
        super().__init__()
        self.config = real.config
        self.down_blocks = torch.nn.ModuleList()  # marks a convolutional UNet: crops allowed
        self.num_upsamplers = 2  # crops rounded to 4 cells
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(real.config.cross_attention_dim, 4, generator=g) * 0.1)
        self.shapes: list[tuple[int, ...]] = []

    @property
    def device(self) -> torch.device:  # what diffusers reads from its own models
        return self.proj.device

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.dtype

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True, **kw: Any) -> tuple[torch.Tensor]:
        self.shapes.append(tuple(sample.shape))
        prompt = (encoder_hidden_states.mean(1) @ self.proj)[:, :, None, None]
        t = torch.as_tensor(timestep, dtype=sample.dtype).flatten()[0] / 1000
        return (torch.tanh(sample * (1 + t)) * 0.7 + prompt,)


def _corner_map(size: int = 128) -> np.ndarray:
    """A graded blob in one corner (0 elsewhere), plus a fainter spot: the free box grows step by step."""
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.clip(1.0 - np.hypot(yy - 24, xx - 100) / 40, 0, 1)
    spot = np.where(np.hypot(yy - 100, xx - 20) < 10, 0.4, 0.0)
    return np.maximum(blob, spot).astype(np.float32)


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_skip_frozen_equals_full_frame_where_pixels_change(
    sd_editor: Editor, monkeypatch: pytest.MonkeyPatch, scheduler: str
) -> None:
    stand_in = PointwiseUNet(sd_editor.pipe.unet)
    monkeypatch.setattr(sd_editor.pipe, "unet", stand_in)
    if scheduler == "ddim":
        monkeypatch.setattr(sd_editor.pipe, "scheduler", DDIMScheduler.from_config(sd_editor.pipe.scheduler.config))
    img, cmap = sample_image(128, 128, seed=2), _corner_map()
    kw = dict(num_inference_steps=10, seed=5, output_type="latent", crop_padding=8)
    full = sd_editor.edit(img, cmap, "a red fox", **kw)
    stand_in.shapes.clear()
    fast = sd_editor.edit(img, cmap, "a red fox", skip_frozen=True, **kw)
    fractions = sd_editor.last_run.denoised_fractions
    moving = (to_latent_map(cmap, 16, 16) > 0).expand_as(full)
    assert torch.equal(full[moving], fast[moving])
    assert len(fractions) == 10
    # The blob's peak averages below 1 on the latent grid, so the first call has nothing to do; then
    # the blob's box grows; the last call also needs the faint spot in the opposite corner: full frame.
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions) and sum(0 < f < 1 for f in fractions) >= 5
    assert len(stand_in.shapes) == 9 and sum(s[-1] < 16 or s[-2] < 16 for s in stand_in.shapes) >= 5
    assert sum(fractions) < 0.6 * 10  # the work really went down


def test_skip_frozen_multistep_scheduler_runs_and_stays_close(sd_editor: Editor, monkeypatch: pytest.MonkeyPatch) -> None:
    # DPM++ 2M reuses earlier predictions: where a pixel was frozen it gets the exact fill instead
    # of the model's guess, so results differ slightly; they must stay close on changing pixels.
    stand_in = PointwiseUNet(sd_editor.pipe.unet)
    monkeypatch.setattr(sd_editor.pipe, "unet", stand_in)
    monkeypatch.setattr(sd_editor.pipe, "scheduler",
                        DPMSolverMultistepScheduler.from_config(sd_editor.pipe.scheduler.config))
    img, cmap = sample_image(128, 128, seed=2), _corner_map()
    kw = dict(num_inference_steps=10, seed=5, output_type="latent", crop_padding=8)
    full = sd_editor.edit(img, cmap, "a red fox", **kw)
    fast = sd_editor.edit(img, cmap, "a red fox", skip_frozen=True, **kw)
    moving = (to_latent_map(cmap, 16, 16) > 0).expand_as(full)
    diff = (full[moving] - fast[moving]).abs()
    assert torch.isfinite(fast).all() and float(diff.mean()) < 0.05 * float(full[moving].abs().mean())


# ----------------------------------------------------------------------------- real tiny SD
def test_full_change_map_is_never_cropped_and_matches(sd_editor: Editor) -> None:
    img = sample_image(64, 64, seed=1)
    ones = np.ones((64, 64), np.float32)
    a = sd_editor.edit(img, ones, "a fox", num_inference_steps=5, seed=3, output_type="latent")
    b = sd_editor.edit(img, ones, "a fox", num_inference_steps=5, seed=3, output_type="latent", skip_frozen=True)
    assert torch.equal(a, b)
    assert sd_editor.last_run.denoised_fractions == [1.0] * 5


def test_skip_frozen_keeps_untouched_pixels_and_records_metadata(sd_editor: Editor) -> None:
    img, cmap = sample_image(128, 128, seed=4), _corner_map()
    out = sd_editor.edit(img, cmap, "a fox", num_inference_steps=6, seed=1, skip_frozen=True)[0]
    keep = cmap == 0
    assert np.array_equal(np.asarray(out)[keep], np.asarray(img)[keep])
    assert not np.array_equal(np.asarray(out)[~keep], np.asarray(img)[~keep])
    assert out.info["diffdiff"]["skip_frozen"] is True
    again = sd_editor.edit(img, cmap, "a fox", num_inference_steps=6, seed=1, skip_frozen=True)[0]
    assert out.tobytes() == again.tobytes()


def test_skip_frozen_with_sdxl_refiner_continues_the_global_schedule(tiny_sdxl_path: Path, tiny_refiner_path: Path) -> None:
    ed = Editor.from_pretrained(tiny_sdxl_path, refiner=tiny_refiner_path, refiner_start=0.5, progress=False)
    img = sample_image(64, 64, seed=1)
    half = np.full((64, 64), 0.5, np.float32)  # frozen for the first half of the global schedule
    kw = dict(num_inference_steps=8, seed=2, output_type="latent")
    a = ed.edit(img, half, "a fox", **kw)
    b = ed.edit(img, half, "a fox", skip_frozen=True, **kw)
    assert ed.last_run.pipeline_calls == 2
    # Map 0.5 of 8 steps: pixels follow the model from global step 4. Base: steps 0-3, all skipped;
    # refiner: steps 4-7, full frame (the refiner must count from where the base stopped).
    assert ed.last_run.denoised_fractions == [0.0] * 4 + [1.0] * 4
    assert torch.equal(a, b)  # Euler keeps no history: skipping frozen steps changes nothing


def test_cli_skip_frozen_flags(tiny_sd_path: Path, tmp_path: Path) -> None:
    img = tmp_path / "in.png"
    sample_image(64, 64, seed=1).save(img)
    from PIL import Image

    Image.fromarray((_corner_map(64) * 255).astype(np.uint8), "L").save(tmp_path / "map.png")
    runner = CliRunner()
    res = runner.invoke(app, ["edit", str(img), "--map", str(tmp_path / "map.png"), "-p", "a fox", "-o",
                              str(tmp_path / "e.png"), "--model", str(tiny_sd_path), "--steps", "3", "--seed", "1",
                              "--skip-frozen"])
    assert res.exit_code == 0, res.output
    assert read_metadata(tmp_path / "e.png")["skip_frozen"] is True
    res = runner.invoke(app, ["fan", str(img), "-p", "a fox", "-o", str(tmp_path / "f.png"), "--model",
                              str(tiny_sd_path), "--steps", "4", "--seed", "1", "--columns", "4", "--full-frame"])
    assert res.exit_code == 0, res.output
    assert read_metadata(tmp_path / "f.png")["skip_frozen"] is False
    assert "--skip-frozen" in runner.invoke(app, ["edit", "--help"]).output
