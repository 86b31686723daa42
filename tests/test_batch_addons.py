"""``diffdiff batch`` with add-ons: ControlNet / LoRA / IP-Adapter loaded for every worker, per-row control inputs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import diffdiff
from diffdiff import batch
from diffdiff.batch import BadRow, LoadedAddons, Row, build_rows
from diffdiff.cli import app
from diffdiff.io import image_sha256, read_metadata
from diffdiff.testing import gradient_map, sample_image

runner = CliRunner()
SRC = str(Path(diffdiff.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("batch-addons")
    for i in range(2):
        sample_image(64, 64, seed=i).save(d / f"img{i}.png")
        sample_image(64, 64, seed=10 + i).save(d / f"ctl{i}.png")
    gradient_map(64, 64).save(d / "map.png")
    return d


@pytest.fixture(scope="module")
def cn_editor(tiny_sd_path: Path, controlnet_path: Path) -> diffdiff.Editor:
    return diffdiff.Editor.from_pretrained(tiny_sd_path, controlnet=controlnet_path, progress=False)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


CN_ROWS = [
    {"id": "c0", "image": "img0.png", "map": "map.png", "prompt": "a cat", "seed": 1, "control_image": "ctl0.png",
     "control_scale": 0.7},
    {"id": "c1", "image": "img1.png", "map": "map.png", "prompt": "a dog", "seed": 2, "control_image": "ctl1.png"},
]


def test_controlnet_batch_rows_match_editor_edit_and_diffdiff_edit(files: Path, tiny_sd_path: Path,
                                                                   controlnet_path: Path, cn_editor: diffdiff.Editor,
                                                                   tmp_path: Path) -> None:
    manifest = _write_jsonl(files / "cn.jsonl", CN_ROWS)
    out = tmp_path / "out"
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(out), "--model", str(tiny_sd_path), "--steps", "2",
                              "--controlnet", str(controlnet_path)])
    assert res.exit_code == 0, res.output
    assert "batch: 2 done, 0 failed" in res.output
    for row in CN_ROWS:  # independent check: the Python API with that row's control image
        want = cn_editor.edit(Image.open(files / row["image"]), str(files / "map.png"), row["prompt"], seed=row["seed"],
                              num_inference_steps=2, control_image=str(files / row["control_image"]),
                              controlnet_conditioning_scale=row.get("control_scale"))[0]
        assert np.array_equal(_pixels(out / f"{row['id']}.png"), np.asarray(want.convert("RGB"))), row["id"]
    other = cn_editor.edit(Image.open(files / "img0.png"), str(files / "map.png"), "a cat", seed=1,
                           num_inference_steps=2, control_image=str(files / "ctl0.png"))[0]
    assert not np.array_equal(_pixels(out / "c0.png"), np.asarray(other.convert("RGB")))  # the row's scale counts
    for row in CN_ROWS:  # each row's own control image went in (its hash), not the other row's
        with Image.open(files / row["control_image"]) as ctl:
            assert read_metadata(out / f"{row['id']}.png")["control_image_sha256"] == [image_sha256(ctl)]
    single = tmp_path / "single.png"
    r = runner.invoke(app, ["edit", str(files / "img0.png"), "--map", str(files / "map.png"), "-p", "a cat",
                            "--seed", "1", "--model", str(tiny_sd_path), "--steps", "2", "-o", str(single),
                            "--controlnet", str(controlnet_path), "--control-image", str(files / "ctl0.png"),
                            "--control-scale", "0.7"])
    assert r.exit_code == 0, r.output
    meta = read_metadata(out / "c0.png")
    assert read_metadata(single) == meta  # what `diffdiff edit` records, exactly
    assert meta["controlnet"] == ["controlnet"] and meta["control_image_files"] == ["ctl0.png"]
    assert meta["controlnet_scale"] == 0.7 and len(meta["control_image_sha256"]) == 1


def test_control_from_default_and_a_row_replacing_it(files: Path, tiny_sd_path: Path, controlnet_path: Path,
                                                     tmp_path: Path) -> None:
    rows = [{"id": "k0", "image": "img0.png", "map": "map.png", "seed": 5},  # the --control-from canny default
            {"id": "k1", "image": "img0.png", "map": "map.png", "seed": 5, "control_image": "ctl1.png"}]
    manifest = _write_jsonl(files / "canny.jsonl", rows)
    out = tmp_path / "out"
    load = ["--model", str(tiny_sd_path), "--steps", "2", "-p", "a fox", "--controlnet", str(controlnet_path)]
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(out), *load, "--control-from", "canny"])
    assert res.exit_code == 0, res.output
    for row_id, control in (("k0", ["--control-from", "canny"]), ("k1", ["--control-image", str(files / "ctl1.png")])):
        single = tmp_path / f"single-{row_id}.png"
        r = runner.invoke(app, ["edit", str(files / "img0.png"), "--map", str(files / "map.png"), "--seed", "5",
                                *load, *control, "-o", str(single)])
        assert r.exit_code == 0, r.output
        assert np.array_equal(_pixels(single), _pixels(out / f"{row_id}.png")), row_id
        assert read_metadata(single) == read_metadata(out / f"{row_id}.png"), row_id
    assert read_metadata(out / "k0.png")["control_from"] == "canny"
    assert "control_from" not in read_metadata(out / "k1.png")


def test_lora_batch_matches_editor_loaded_with_that_lora(files: Path, tiny_sd_path: Path, sd_editor: diffdiff.Editor,
                                                        tmp_path: Path, lora_file: Path) -> None:
    lora = lora_file
    manifest = _write_jsonl(files / "lora.jsonl", [{"id": "l0", "image": "img0.png", "map": "map.png", "seed": 3}])
    out = tmp_path / "out"
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(out), "--model", str(tiny_sd_path), "--steps", "2",
                              "-p", "a fox", "--lora", f"{lora}:0.8"])
    assert res.exit_code == 0, res.output
    kw: dict[str, Any] = {"seed": 3, "num_inference_steps": 2}
    img = Image.open(files / "img0.png")
    want = diffdiff.Editor.from_pretrained(tiny_sd_path, lora=[f"{lora}:0.8"], progress=False).edit(
        img, str(files / "map.png"), "a fox", **kw)[0]
    assert np.array_equal(_pixels(out / "l0.png"), np.asarray(want.convert("RGB")))
    plain = sd_editor.edit(img, str(files / "map.png"), "a fox", **kw)[0]
    assert not np.array_equal(_pixels(out / "l0.png"), np.asarray(plain.convert("RGB")))  # the LoRA was loaded
    ((record),) = read_metadata(out / "l0.png")["lora"]
    assert record["lora"] == lora.name and record["scale"] == 0.8


def test_ip_adapter_batch_default_and_row_images_match_diffdiff_edit(files: Path, tiny_sd_path: Path,
                                                                     tmp_path: Path, ip_weights: Path) -> None:
    ip = ip_weights
    rows = [{"id": "i0", "image": "img0.png", "map": "map.png", "seed": 4},  # the --ip-adapter-image default
            {"id": "i1", "image": "img0.png", "map": "map.png", "seed": 4, "ip_adapter_image": "ctl1.png"}]
    manifest = _write_jsonl(files / "ip.jsonl", rows)
    out = tmp_path / "out"
    load = ["--model", str(tiny_sd_path), "--steps", "2", "-p", "a fox", "--ip-adapter", str(ip),
            "--ip-adapter-scale", "0.6"]
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(out), *load, "--ip-adapter-image", str(files / "ctl0.png")])
    assert res.exit_code == 0, res.output
    for row_id, ref in (("i0", "ctl0.png"), ("i1", "ctl1.png")):
        single = tmp_path / f"single-{row_id}.png"
        r = runner.invoke(app, ["edit", str(files / "img0.png"), "--map", str(files / "map.png"), "--seed", "4",
                                *load, "--ip-adapter-image", str(files / ref), "-o", str(single)])
        assert r.exit_code == 0, r.output
        assert np.array_equal(_pixels(single), _pixels(out / f"{row_id}.png")), row_id
        meta = read_metadata(out / f"{row_id}.png")
        assert read_metadata(single) == meta and meta["ip_adapter_image_file"] == ref, row_id
    assert meta["ip_adapter"]["scale"] == 0.6
    assert not np.array_equal(_pixels(out / "i0.png"), _pixels(out / "i1.png"))  # each row's own reference image


def test_batch_takes_the_addon_options_of_edit() -> None:
    """One definition: batch's add-on options are edit's (names, types, defaults, help, panel)."""
    import typer

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]

    def addon_params(name: str) -> list[tuple[Any, ...]]:
        return [(p.opts[0], p.multiple, p.default, p.help, p.metavar) for p in commands[name].params
                if p.rich_help_panel == "Add-ons: ControlNet, LoRA, IP-Adapter"]

    assert addon_params("batch") == addon_params("edit") and len(addon_params("batch")) == 9


@pytest.mark.parametrize("extra, rows, needle", [
    ([], [{"control_image": "ctl0.png"}], "'control_image' needs a ControlNet: load one with --controlnet PATH"),
    ([], [{"control_from": "canny"}], "'control_from' needs a ControlNet"),
    ([], [{"ip_adapter_image": "ctl0.png"}], "'ip_adapter_image' needs an IP-Adapter"),
    (["--controlnet", "{cn}"], [{"control_image": "nope.png"}], "'control_image': control image file '"),
    (["--controlnet", "{cn}"], [{}], "a ControlNet is loaded: the row needs 'control_image' or 'control_from'"),
    (["--controlnet", "{cn}"], [{"control_image": "ctl0.png", "control_from": "canny"}], "not both"),
    (["--controlnet", "{cn}"], [{"control_from": "sobel"}], "control_from must be one of canny"),
    (["--controlnet", "{cn}"], [{"control_image": "ctl0.png", "control_scale": -1}], "control_scale must be a number >= 0"),
    (["--ip-adapter", "ip.safetensors"], [{}], "an IP-Adapter is loaded: the row needs 'ip_adapter_image'"),
    (["--ip-adapter", "ip.safetensors"], [{"ip_adapter_image": "nope.png"}], "'ip_adapter_image': IP-Adapter image file '"),
])
def test_bad_addon_row_is_one_line_nothing_written_no_model_loaded(
        files: Path, tiny_sd_path: Path, controlnet_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        extra: list[str], rows: list[dict[str, Any]], needle: str) -> None:
    from diffdiff.cli import batch as cli_batch

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded for a batch whose rows are all bad")

    monkeypatch.setattr(cli_batch, "load_editor", no_load)
    manifest = _write_jsonl(files / "bad.jsonl", [{"id": "bad", "image": "img0.png", "map": "map.png", "prompt": "x",
                                                    **r} for r in rows])
    out = tmp_path / "out"
    args = [a.format(cn=controlnet_path) for a in extra]
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(out), "--model", str(tiny_sd_path), *args])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    failed = [line for line in res.output.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: bad: ") and needle in failed[0], res.output
    assert "batch: 0 done, 1 failed" in res.output
    assert sorted(p.name for p in out.iterdir()) == [".diffdiff-batch.lock", "results.jsonl"]  # no PNG, no temp file


def test_addon_defaults_and_types(files: Path) -> None:
    cn = LoadedAddons(controlnet=True)
    recs = [({"image": "img0.png", "map": "map.png", "prompt": "x"}, False),  # the default control image
            ({"image": "img0.png", "map": "map.png", "prompt": "x", "control_from": "canny"}, False),  # replaces it
            ({"image": "img0.png", "map": "map.png", "prompt": "x", "control_image": "ctl1.png",
              "control_mode": "3", "control_scale": "0.5"}, True)]
    a, b, c = build_rows(recs, files, {"control_image": str(files / "ctl0.png"), "control_scale": 0.9}, cn)
    assert isinstance(a, Row) and a.settings["control_image"] == str(files / "ctl0.png")
    assert a.settings["control_scale"] == 0.9
    assert isinstance(b, Row) and "control_image" not in b.settings and b.settings["control_from"] == "canny"
    assert isinstance(c, Row) and c.settings["control_image"] == str(files / "ctl1.png")  # relative to the manifest
    assert c.settings["control_mode"] == "3" and c.settings["control_scale"] == 0.5
    (bad,) = build_rows([({"image": "i.png", "map": "m.png", "prompt": "x", "control_mode": "sideways"}, False)],
                        files, None, cn)
    assert isinstance(bad, BadRow) and "unknown control mode 'sideways'" in bad.error


def test_two_control_image_defaults_refused_in_one_line(files: Path, tiny_sd_path: Path, controlnet_path: Path,
                                                       tmp_path: Path) -> None:
    manifest = _write_jsonl(files / "one.jsonl", [{"image": "img0.png", "map": "map.png", "prompt": "x"}])
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "o"), "--model", str(tiny_sd_path),
                              "--controlnet", str(controlnet_path), "--control-image", str(files / "ctl0.png"),
                              "--control-image", str(files / "ctl1.png")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "batch takes one --control-image default" in res.output
    assert not (tmp_path / "o").exists()


def test_ray_controlnet_run_matches_the_local_run(files: Path, tiny_sd_path: Path, controlnet_path: Path,
                                                  cn_editor: diffdiff.Editor, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = SRC + (os.pathsep + old if old else "")  # workers import this checkout
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    rows = [dict(r, steps=2) for r in CN_ROWS]
    manifest = _write_jsonl(files / "ray.jsonl", rows)
    try:  # the CLI: every worker loads the model with --controlnet; inputs travel as bytes
        res = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "ray"), "--model", str(tiny_sd_path),
                                  "--controlnet", str(controlnet_path), "--ray", "auto", "--workers", "1"])
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    assert res.exit_code == 0 and "batch: 2 done, 0 failed" in res.output, res.output
    local = batch.run(rows, tmp_path / "local", cn_editor, base_dir=files)
    assert local.done == 2
    for row in rows:  # inputs travelled as bytes: same pixels and metadata (file names included)
        name = f"{row['id']}.png"
        assert np.array_equal(_pixels(tmp_path / "ray" / name), _pixels(tmp_path / "local" / name))
        assert read_metadata(tmp_path / "ray" / name) == read_metadata(tmp_path / "local" / name)
