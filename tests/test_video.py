"""Video: per-frame change maps on tiny offline Wan 2.x, CogVideoX and AnimateDiff video-to-video pipelines.

Checked against code we did not write: a full-change map reproduces each diffusers pipeline's own
video-to-video call (same seed) exactly; the model's input at every step holds, where the map
keeps, the pipeline's own reference noised by the scheduler's own ``add_noise`` (so the 5-D
blend acts on the right axis in every layout); the temporal rule (maximum over the frames a
latent frame packs) against a hand computation and against the hook's recorded free fractions;
keep pixels byte-identical in every frame; the CLI's formats and bad-input lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffdiff import Editor
from diffdiff.cli import app
from diffdiff.errors import DiffDiffError, UnsupportedModelError
from diffdiff.families import adapter_for
from diffdiff.io import read_metadata
from diffdiff.testing_video import (
    build_tiny_animatediff,
    build_tiny_cogvideox,
    build_tiny_wan,
    half_map,
    sample_clip,
    wan_scheduler,
)
from diffdiff.video import (
    latent_frame_groups,
    load_video_maps,
    padded_count,
    parse_ramp,
    ramp_values,
    read_video,
    read_video_metadata,
    to_latent_video_map,
    write_video,
)

W, H = 48, 32
PROMPT = "a red car"
runner = CliRunner()


BUILDERS = {"wan": build_tiny_wan, "cogvideox": build_tiny_cogvideox, "animatediff": build_tiny_animatediff}
FAMILIES = list(BUILDERS)


@pytest.fixture(scope="module")
def video_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video")
    return {name: build(root / f"tiny-{name}") for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def editors(video_models: dict[str, Path]) -> dict[str, Editor]:
    return {name: Editor.from_pretrained(path, progress=False) for name, path in video_models.items()}


@pytest.fixture(scope="module")
def wan_path(video_models: dict[str, Path]) -> Path:
    return video_models["wan"]


@pytest.fixture(scope="module")
def wan(editors: dict[str, Editor]) -> Editor:
    return editors["wan"]


@pytest.fixture(scope="module")
def clip() -> list[Image.Image]:
    return sample_clip(5, W, H, seed=2)


def _arrays(frames: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(f.convert("RGB")) for f in frames]


# -------------------------------------------------------------------------------- the temporal rule
def test_wan_packing_first_frame_alone_then_four_per_latent_frame() -> None:
    assert latent_frame_groups(9, 4) == [(0, 1), (1, 5), (5, 9)]
    assert latent_frame_groups(1, 4) == [(0, 1)]
    assert [padded_count(n, 4) for n in (1, 2, 5, 6, 9, 10)] == [1, 5, 5, 9, 9, 13]
    assert latent_frame_groups(4, 1, first_alone=False) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError):
        latent_frame_groups(6, 4)


def test_latent_frame_map_is_the_max_over_its_frames_after_a_box_filter() -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, size=(9, 16, 24)).astype(np.float32)
    got = to_latent_video_map(maps, latent_frame_groups(9, 4), 2, 3)
    assert got.shape == (1, 1, 3, 2, 3)
    # Independent: mean over 8x8 blocks per frame (numpy reshape), then max over each latent frame's frames.
    boxed = maps.reshape(9, 2, 8, 3, 8).mean(axis=(2, 4))
    want = np.stack([boxed[0], boxed[1:5].max(0), boxed[5:9].max(0)])
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=0, atol=1e-6)
    # No frame changes less than it asks: every frame's value is <= its latent frame's.
    for k, (a, b) in enumerate(latent_frame_groups(9, 4)):
        assert np.all(boxed[a:b] <= got[0, 0, k].numpy() + 1e-7)


def test_ramp_grows_linearly_and_scales_the_map() -> None:
    np.testing.assert_allclose(ramp_values(5, 0.0, 1.0), [0, 0.25, 0.5, 0.75, 1.0])
    assert parse_ramp("0.2:0.8") == (0.2, 0.8)
    maps = load_video_maps(half_map(W, H), 5, (W, H), ramp=(0.0, 1.0))
    assert maps.shape == (5, H, W)
    assert np.all(maps[0] == 0) and np.all(maps[4][:, W // 2:] == 1) and np.all(maps[:, :, : W // 2] == 0)
    np.testing.assert_allclose(maps[2][:, W // 2:], 0.5)
    for bad in ("1", "a:b", "0:2", "-1:1", "0:1:1"):
        with pytest.raises(DiffDiffError, match="--map-ramp|map ramp"):
            parse_ramp(bad)


# -------------------------------------------------------------------------------- the families
def _pipeline_class(family: str) -> type:
    import diffusers

    return getattr(diffusers, {"wan": "WanVideoToVideoPipeline", "cogvideox": "CogVideoXVideoToVideoPipeline",
                               "animatediff": "AnimateDiffVideoToVideoPipeline"}[family])


@pytest.mark.parametrize("family", [*FAMILIES, "wan-flow"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_full_change_map_is_the_pipelines_own_video_to_video(video_models: dict[str, Path], clip: list[Image.Image],
                                                             family: str, strength: float) -> None:
    name = family.split("-")[0]
    extra = {"scheduler": wan_scheduler("flow")} if family == "wan-flow" else {}
    pipe = _pipeline_class(name).from_pretrained(video_models[name], **extra)
    pipe.set_progress_bar_config(disable=True)
    ed = Editor(pipe, progress=False)
    assert ed.family == name
    ours = ed.edit_video(clip, Image.new("L", (W, H), 255), PROMPT, num_inference_steps=5, strength=strength,
                         seed=7, output_type="latent")
    theirs = pipe(video=clip if name != "cogvideox" else clip + clip[-1:] * 4, prompt=PROMPT, num_inference_steps=5,
                  strength=strength, height=H, width=W, generator=torch.Generator().manual_seed(7),
                  output_type="latent").frames
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    assert ed.last_run.pipeline_calls == 1
    assert ed.last_run.total_steps == int(5 * strength)


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_latent_frames_enter_the_model_as_the_pipelines_reference_noised(editors: dict[str, Editor],
                                                                              clip: list[Image.Image],
                                                                              family: str) -> None:
    # Frame 0 (latent frame 0 in every family) is kept, the rest may change. After every step the
    # model's input must hold, in latent frame 0, the reference the pipeline encoded and noised,
    # re-noised by the scheduler's own add_noise to that step's timestep; elsewhere the model's own.
    ed = editors[family]
    model = getattr(ed.pipe, "transformer", None) or ed.pipe.unet
    inputs: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: inputs.append((kwargs.get("hidden_states", args[0] if args else None)).clone()),
        with_kwargs=True)
    try:
        maps = [Image.new("L", (W, H), 0 if k == 0 else 255) for k in range(5)]
        ed.edit_video(clip, maps, PROMPT, num_inference_steps=4, guidance_scale=1.0, seed=5)
    finally:
        hook.remove()
    ref = ed.last_run.reference
    assert ref is not None and len(inputs) == 4
    sched = ed.pipe.scheduler
    frames_axis = 1 if family == "cogvideox" else 2  # the model's input layout: (B, F, C, ..) or (B, C, F, ..)
    ref_axis = 2 if family == "wan" else 1  # the reference's layout
    for step, (x, t) in enumerate(zip(inputs[1:], sched.timesteps[1:]), start=1):
        want = sched.add_noise(ref.clean, ref.noise, t.reshape(1)).select(ref_axis, 0)
        assert torch.equal(x.select(frames_axis, 0), want), f"step {step}: kept latent frame is not the reference"
        assert not torch.equal(x.select(frames_axis, 1), sched.add_noise(ref.clean, ref.noise, t.reshape(1)).select(ref_axis, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_black_pixels_identical_in_every_frame_and_the_right_half_changes(editors: dict[str, Editor],
                                                                          clip: list[Image.Image], family: str) -> None:
    out = editors[family].edit_video(clip, half_map(W, H), PROMPT, num_inference_steps=3, seed=1)
    assert len(out) == 5 and all(f.size == (W, H) and f.mode == "RGB" for f in out)
    for got, src in zip(_arrays(out), _arrays(clip)):
        assert np.array_equal(got[:, : W // 2], src[:, : W // 2])
        assert np.abs(got[:, W // 2:].astype(int) - src[:, W // 2:]).mean() > 5
    meta = out[3].info["diffdiff"]
    assert meta["frame"] == 3 and meta["family"] == family and meta["seed"] == 1
    assert meta["latent_frames"] == {"wan": 2, "cogvideox": 3, "animatediff": 5}[family]


@pytest.mark.parametrize(("family", "free"), [("wan", 1 / 2), ("cogvideox", 1 / 3), ("animatediff", 1 / 5)])
def test_a_frame_alone_in_the_map_frees_its_whole_latent_frame(editors: dict[str, Editor], clip: list[Image.Image],
                                                               family: str, free: float) -> None:
    # Only frame 3 may change. In Wan and CogVideoX it shares latent frame 1 with frames 1, 2 and 4,
    # which the maximum frees (a mean would give 0.25, which 3 steps never free before the last
    # step); AnimateDiff has no temporal packing, so only frame 3's latent frame is free.
    maps = [Image.new("L", (W, H), 255 if k == 3 else 0) for k in range(5)]
    out = editors[family].edit_video(clip, maps, PROMPT, num_inference_steps=3, seed=1)
    assert [r.free_fraction for r in editors[family].last_run.records] == pytest.approx([free, free], abs=1e-7)
    for k, (got, src) in enumerate(zip(_arrays(out), _arrays(clip))):
        if k == 3:
            assert np.abs(got.astype(int) - src).mean() > 5
        else:  # pasted back: their own maps are 0
            assert np.array_equal(got, src)


def test_odd_length_clip_is_padded_for_the_vae_and_trimmed_back(wan: Editor) -> None:
    six = sample_clip(6, W, H, seed=4)
    out = wan.edit_video(six, half_map(W, H), PROMPT, num_inference_steps=2, seed=3)
    assert len(out) == 6
    assert out[0].info["diffdiff"]["model_frames"] == 9 and out[0].info["diffdiff"]["latent_frames"] == 3
    assert all(np.array_equal(g[:, : W // 2], s[:, : W // 2]) for g, s in zip(_arrays(out), _arrays(six)))


def test_ramp_from_keep_keeps_the_first_frame_exactly(wan: Editor, clip: list[Image.Image]) -> None:
    out = wan.edit_video(clip, None, PROMPT, map_ramp=(0.0, 1.0), num_inference_steps=3, seed=1)
    assert np.array_equal(_arrays(out)[0], _arrays(clip)[0])
    assert np.abs(_arrays(out)[4].astype(int) - _arrays(clip)[4]).mean() > 5
    assert out[0].info["diffdiff"]["map_ramp"] == [0.0, 1.0]


def test_nothing_to_change_returns_the_clip_without_a_model_call(wan: Editor, clip: list[Image.Image]) -> None:
    wan.last_run.pipeline_calls = -1
    out = wan.edit_video(clip, Image.new("L", (W, H), 0), PROMPT, num_inference_steps=3, seed=1)
    assert [np.asarray(f).tobytes() for f in out] == [np.asarray(f).tobytes() for f in clip]
    assert wan.last_run.pipeline_calls == 0


def test_families_refuse_what_they_cannot_do_in_one_line(wan: Editor, sd_editor: Editor,
                                                         clip: list[Image.Image]) -> None:
    with pytest.raises(DiffDiffError, match=r"the sd family edits images; edit_video needs a video-to-video model: wan") as e:
        sd_editor.edit_video(clip, half_map(W, H), PROMPT, num_inference_steps=2)
    assert "\n" not in str(e.value)
    with pytest.raises(DiffDiffError, match="the wan family edits videos, not single images: use Editor.edit_video"):
        wan.edit(clip[0], half_map(W, H), PROMPT, num_inference_steps=2, seed=1)

    for name, lack in [("LTXConditionPipeline", "no video-to-video noising of its own"), ("WanImageToVideoPipeline", "no input video"),
                       ("WanVACEPipeline", "no strength")]:
        fake = type(name, (), {"scheduler": None, "__call__": lambda self, video=None: None})  # the registry reads the name
        with pytest.raises(UnsupportedModelError, match=rf"^{name} cannot be edited with a change map: {lack}.*wan") as e:
            adapter_for(fake())
        assert "\n" not in str(e.value)


def test_clips_above_the_frame_limit_are_refused_before_any_work(wan: Editor, clip: list[Image.Image]) -> None:
    wan.last_run.pipeline_calls = -1
    with pytest.raises(DiffDiffError, match="video has more than 257 frames, above the limit"):
        wan.edit_video(clip[:1] * 258, half_map(W, H), PROMPT, num_inference_steps=2)
    assert wan.last_run.pipeline_calls == -1
    assert len(wan.edit_video(clip[:1] * 9, Image.new("L", (W, H), 0), PROMPT, max_frames=9)) == 9


def test_webp_map_with_merged_still_frames_is_expanded_to_the_clip(tmp_path: Path) -> None:
    maps = np.zeros((5, H, W, 3), dtype=np.uint8)
    maps[3] = 255
    iio.imwrite(tmp_path / "m.webp", maps, extension=".webp", plugin="pillow", duration=100, loop=0, lossless=True)
    assert Image.open(tmp_path / "m.webp").n_frames == 3  # libwebp stored frames 0-2 as one
    got = load_video_maps(tmp_path / "m.webp", 5, (W, H))
    assert [float(m.max()) for m in got] == [0, 0, 0, 1, 0]


def test_map_length_and_aspect_are_checked(clip: list[Image.Image]) -> None:
    with pytest.raises(DiffDiffError, match="the map video has 3 frames but the video has 5"):
        load_video_maps([half_map(W, H)] * 3, 5, (W, H))
    with pytest.raises(DiffDiffError, match="aspect ratios differ"):
        load_video_maps(Image.new("L", (32, 32), 255), 5, (W, H))


# -------------------------------------------------------------------------------- files and the CLI
def _save_gif(frames: list[Image.Image], path: Path) -> Path:
    iio.imwrite(path, np.stack(_arrays(frames)), extension=".gif", plugin="pillow", duration=125, loop=0)
    return path


@pytest.fixture
def files(tmp_path: Path, clip: list[Image.Image]) -> Path:
    _save_gif(clip, tmp_path / "in.gif")
    (tmp_path / "frames").mkdir()
    for k, f in enumerate(clip):
        f.save(tmp_path / "frames" / f"f{k}.png")
    half_map(W, H).save(tmp_path / "half.png")
    return tmp_path


def test_formats_round_trip_and_write_atomically(tmp_path: Path, clip: list[Image.Image]) -> None:
    meta = {"seed": 5}
    for name in ("c.webp", "c.gif", "c.mp4", "folder"):
        paths = write_video(clip, tmp_path / name, fps=10, metadata=meta)
        back, fps = read_video(paths[0])
        assert len(back) == 5 and back[0].size == (W, H)
        assert read_video_metadata(tmp_path / name)["seed"] == 5
        if name in ("c.webp", "folder"):  # lossless
            assert all(np.array_equal(a, b) for a, b in zip(_arrays(back), _arrays(clip)))
        assert fps == (10 if name != "folder" else 8)  # a folder records no rate: the default
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_cli_gif_to_mp4_with_sidecar_and_folder_to_png_frames(wan_path: Path, files: Path) -> None:
    common = ["-p", PROMPT, "--model", str(wan_path), "--steps", "3", "--seed", "4"]
    r = runner.invoke(app, ["edit-video", str(files / "in.gif"), "--map", str(files / "half.png"),
                            "-o", str(files / "out.mp4"), *common])
    assert r.exit_code == 0, r.output
    back, _ = read_video(files / "out.mp4")
    assert len(back) == 5
    meta = json.loads((files / "out.mp4.json").read_text())
    assert meta["seed"] == 4 and meta["family"] == "wan" and meta["frames"] == 5 and meta["map_file"] == "half.png"

    r = runner.invoke(app, ["edit-video", str(files / "frames"), "--map", str(files / "half.png"), "--map-ramp", "0.5:1",
                            "-o", str(files / "out"), *common])
    assert r.exit_code == 0, r.output
    outs = sorted((files / "out").iterdir())
    assert [p.name for p in outs] == [f"frame-{k:05d}.png" for k in range(5)]
    srcs = [np.asarray(Image.open(files / "frames" / f"f{k}.png")) for k in range(5)]
    for k, p in enumerate(outs):
        got = np.asarray(Image.open(p))
        assert np.array_equal(got[:, : W // 2], srcs[k][:, : W // 2])
        md = read_metadata(p)
        assert md["frame"] == k and md["map_ramp"] == [0.5, 1.0] and md["prompt"] == PROMPT

    # A map video of the same length: only frame 3 may change; every other frame comes back exact.
    # (The GIF encoder stores the three identical black frames as one of triple duration.)
    only3 = [Image.new("RGB", (W, H), (255, 255, 255) if k == 3 else (0, 0, 0)) for k in range(5)]
    r = runner.invoke(app, ["edit-video", str(files / "frames"), "--map", str(_save_gif(only3, files / "m.gif")),
                            "-o", str(files / "out3"), *common])
    assert r.exit_code == 0, r.output
    got = [np.asarray(Image.open(files / "out3" / f"frame-{k:05d}.png")) for k in range(5)]
    assert len(Image.open(files / "m.gif").n_frames * [0]) == 3
    assert [np.array_equal(g, s) for g, s in zip(got, srcs)] == [True, True, True, False, True]


def test_a_folder_of_per_frame_maps_is_read_in_natural_order(tmp_path: Path) -> None:
    for k in range(11):  # m2 before m10
        Image.new("L", (W, H), 10 * k).save(tmp_path / f"m{k}.png")
    maps = load_video_maps(tmp_path, 11, (W, H))
    np.testing.assert_allclose(maps[:, 0, 0], [10 * k / 255 for k in range(11)], atol=1e-6)
    with pytest.raises(DiffDiffError, match="the map video has 11 frames but the video has 5"):
        load_video_maps(tmp_path, 5, (W, H))


@pytest.mark.parametrize("case", ["short_map", "aspect", "unreadable", "too_long", "bad_ramp", "no_map", "bad_out",
                                  "full_folder"])
def test_cli_bad_input_is_one_line_and_writes_nothing(wan_path: Path, files: Path, clip: list[Image.Image],
                                                      case: str) -> None:
    video, extra, out = files / "in.gif", ["--map", str(files / "half.png")], files / "bad.mp4"
    expect = {
        "short_map": "the map video has 3 frames but the video has 5",
        "aspect": "aspect ratios differ",
        "unreadable": "is not a readable video",
        "too_long": "has more than 3 frames, above the limit",
        "bad_ramp": "--map-ramp must be START:END",
        "no_map": "pass --map MAP, --map-ramp START:END, or both",
        "bad_out": "must end in .mp4, .gif, .webp",
        "full_folder": "already exists and is not empty",
    }[case]
    if case == "short_map":
        extra = ["--map", str(_save_gif(clip[:3], files / "short.gif"))]
    elif case == "aspect":
        Image.new("L", (32, 32), 255).save(files / "square.png")
        extra = ["--map", str(files / "square.png")]
    elif case == "unreadable":
        video = files / "broken.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 4)
    elif case == "too_long":
        extra += ["--max-frames", "3"]
    elif case == "bad_ramp":
        extra += ["--map-ramp", "0:5"]
    elif case == "no_map":
        extra = []
    elif case == "bad_out":
        out = files / "bad.png"
    elif case == "full_folder":
        out = files / "frames"
    before = {p: p.stat().st_mtime_ns for p in files.rglob("*")}
    r = runner.invoke(app, ["edit-video", str(video), *extra, "-o", str(out), "-p", PROMPT, "--model", str(wan_path)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.output
    assert {p: p.stat().st_mtime_ns for p in files.rglob("*")} == before


@pytest.mark.parametrize(("family", "t2v"), [("wan", "WanPipeline"), ("cogvideox", "CogVideoXPipeline"),
                                            ("animatediff", "AnimateDiffPipeline")])
def test_text_to_video_checkpoints_load_as_video_to_video(editors: dict[str, Editor], tmp_path: Path,
                                                          clip: list[Image.Image], family: str, t2v: str) -> None:
    import diffusers

    getattr(diffusers, t2v)(**editors[family].pipe.components).save_pretrained(tmp_path / "t2v")
    assert json.loads((tmp_path / "t2v" / "model_index.json").read_text())["_class_name"] == t2v
    ed = Editor.from_pretrained(tmp_path / "t2v", progress=False)
    assert ed.family == family
    out = ed.edit_video(clip, half_map(W, H), PROMPT, num_inference_steps=2, seed=1)
    assert len(out) == 5


def test_cogvideox_15_temporal_patches_are_refused_in_one_line(video_models: dict[str, Path]) -> None:
    from diffusers import CogVideoXVideoToVideoPipeline

    pipe = CogVideoXVideoToVideoPipeline.from_pretrained(video_models["cogvideox"])
    pipe.transformer.register_to_config(patch_size_t=2)
    with pytest.raises(DiffDiffError, match=r"^CogVideoX 1\.5 \(temporal patches, patch_size_t\) has no video-to-video"):
        Editor(pipe, progress=False)


def test_frame_sizes_off_the_model_grid_come_back_at_their_own_size(wan: Editor) -> None:
    odd = sample_clip(5, 40, 28, seed=6)  # Wan runs at the nearest multiples of 16, resized back
    out = wan.edit_video(odd, half_map(40, 28), PROMPT, num_inference_steps=2, seed=2)
    assert all(f.size == (40, 28) for f in out)
    assert all(np.array_equal(g[:, :20], s[:, :20]) for g, s in zip(_arrays(out), _arrays(odd)))
    ww, wh = wan.last_run.work_size
    assert ww % 16 == 0 and wh % 16 == 0 and (ww, wh) != (40, 28)


def test_video_pipeline_kwargs_are_checked_like_image_ones(wan: Editor, clip: list[Image.Image]) -> None:
    cmap = np.ones((clip[0].height, clip[0].width), np.float32)
    with pytest.raises(DiffDiffError, match="not_an_argument"):
        wan.edit_video(clip, cmap, "a cat", num_inference_steps=2, seed=0, pipeline_kwargs={"not_an_argument": 1})
    with pytest.raises(DiffDiffError, match=r"^pipeline_kwargs \(max_sequence_length\): the pipeline refused them"):
        wan.edit_video(clip, cmap, "a cat", num_inference_steps=2, seed=0, pipeline_kwargs={"max_sequence_length": -3})
