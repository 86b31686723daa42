"""``diffdiff batch`` / :mod:`diffdiff.batch`: manifests, bad rows, resume after a kill, grouping, Ray."""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import diffdiff
from diffdiff import batch
from diffdiff.batch import BadRow, Row, build_rows, load_model, read_manifest
from diffdiff.cli import app
from diffdiff.io import read_metadata
from diffdiff.testing import gradient_map, sample_image

runner = CliRunner()
SRC = str(Path(diffdiff.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("batch-inputs")
    for i in range(4):
        sample_image(64, 64, seed=i).save(d / f"img{i}.png")
    gradient_map(64, 64).save(d / "map.png")
    gradient_map(64, 32).save(d / "wide.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    mask.save(d / "mask.png")
    return d


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(outdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (outdir / "results.jsonl").read_text().splitlines()]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


SIX_ROWS = [
    {"id": "map", "image": "img0.png", "map": "map.png", "prompt": "a red cat", "seed": 1},
    {"id": "soft", "image": "img1.png", "mask": "mask.png", "softness": 3, "prompt": "a dog", "seed": 2},
    {"id": "auto", "image": "img2.png", "source_prompt": "a photo", "prompt": "a cat", "seed": 3},
    {"id": "broken", "image": "no-such-image.png", "map": "map.png", "prompt": "a cat", "seed": 4},
    {"id": "keep", "image": "img3.png", "map": "map.png", "polarity": "keep", "strength": 0.8, "seed": 5},
    {"id": "two", "image": "img0.png", "map": "map.png", "prompt": "a bird", "num_images": 2, "seed": 6},
]


def test_six_rows_one_broken_then_fixed_and_resumed(inputs: Path, tiny_sd_path: Path, tmp_path: Path) -> None:
    manifest = _write_jsonl(inputs / "six.jsonl", SIX_ROWS)
    out = tmp_path / "out"
    args = ["batch", str(manifest), "-o", str(out), "--model", str(tiny_sd_path), "--steps", "2", "-p", "a default"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert "batch: 5 done, 1 failed, 0 skipped (done before) of 6 rows" in res.output
    lines = _lines(out)
    assert sorted(r["id"] for r in lines) == sorted(r["id"] for r in SIX_ROWS)
    broken = next(r for r in lines if r["id"] == "broken")
    assert broken["status"] == "error" and "does not exist" in broken["error"] and "\n" not in broken["error"]
    ok = {r["id"]: r for r in lines if r["status"] == "ok"}
    assert set(ok) == {"map", "soft", "auto", "keep", "two"}
    assert ok["two"]["outputs"] == ["two-1.png", "two-2.png"]
    assert {r["seed"] for r in ok.values()} == {1, 2, 3, 5, 6}
    assert read_metadata(out / "keep.png")["prompt"] == "a default"  # --prompt is the default

    # Each row equals the single-image command run with the same options (independent code path).
    common = ["--model", str(tiny_sd_path), "--steps", "2"]
    singles = {
        "map": ["edit", str(inputs / "img0.png"), "--map", str(inputs / "map.png"), "-p", "a red cat", "--seed", "1"],
        "soft": ["soft-inpaint", str(inputs / "img1.png"), "--mask", str(inputs / "mask.png"), "--softness", "3",
                 "-p", "a dog", "--seed", "2"],
        "auto": ["edit", str(inputs / "img2.png"), "--auto-map", "a photo", "-p", "a cat", "--seed", "3"],
        "keep": ["edit", str(inputs / "img3.png"), "--map", str(inputs / "map.png"), "-p", "a default", "--seed", "5",
                 "--polarity", "keep", "--strength", "0.8"],
    }
    for row_id, cmd in singles.items():
        single = tmp_path / f"single-{row_id}.png"
        r = runner.invoke(app, [*cmd, *common, "-o", str(single)])
        assert r.exit_code == 0, r.output
        assert np.array_equal(_pixels(single), _pixels(out / f"{row_id}.png")), row_id
        assert read_metadata(single) == read_metadata(out / f"{row_id}.png"), row_id

    # Second run: the five done rows are skipped, the broken one fails again (exit 1 again).
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "0 done, 1 failed, 5 skipped" in res.output, res.output
    # Fix the broken row's input: the third run does only that row and exits 0.
    sample_image(64, 64, seed=9).save(inputs / "no-such-image.png")
    try:
        res = runner.invoke(app, args)
    finally:
        (inputs / "no-such-image.png").unlink()
    assert res.exit_code == 0 and "1 done, 0 failed, 5 skipped" in res.output, res.output
    ok_lines = [r["id"] for r in _lines(out) if r["status"] == "ok"]
    assert sorted(ok_lines) == sorted(r["id"] for r in SIX_ROWS)  # each row done exactly once


def test_csv_manifest_reads_like_jsonl(inputs: Path) -> None:
    rows = [{"id": "a", "image": "img0.png", "map": "map.png", "prompt": "x", "steps": 3, "seed": 7,
             "paste_back": False, "guidance": 2.5},
            {"id": "b", "image": "img1.png", "mask": "mask.png", "softness": 2.0, "prompt": "y, with a comma"}]
    jl = read_manifest(_write_jsonl(inputs / "m.jsonl", rows))
    with open(inputs / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "map", "mask", "softness", "prompt", "steps", "seed",
                                          "paste_back", "guidance"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "paste_back": "false" if r.get("paste_back") is False else ""})
    cs = read_manifest(inputs / "m.csv")
    assert build_rows(jl, inputs) == build_rows(cs, inputs)
    first = build_rows(cs, inputs)[0]
    assert isinstance(first, Row) and first.settings["steps"] == 3 and first.settings["paste_back"] is False
    assert first.image == str(inputs / "img0.png") and first.seed == 7


@pytest.mark.parametrize("record, needle", [
    ({"image": "a.png", "map": "m.png", "prompt": "x", "strenght": 1}, "unknown field 'strenght'"),
    ({"image": "a.png", "map": "m.png", "mask": "k.png", "prompt": "x"}, "not map and mask"),
    ({"image": "a.png", "prompt": "x"}, "missing 'map'"),
    ({"map": "m.png", "prompt": "x"}, "missing field 'image'"),
    ({"image": "a.png", "map": "m.png"}, "missing field 'prompt'"),
    ({"image": "a.png", "map": "m.png", "prompt": "x", "softness": 2}, "'softness' applies to 'mask' rows"),
    ({"image": "a.png", "mask": "k.png", "prompt": "x"}, "needs 'softness'"),
    ({"image": "a.png", "mask": "k.png", "softness": 2, "prompt": "x", "polarity": "keep"}, "'map' rows only"),
    ({"image": "a.png", "map": "m.png", "prompt": "x", "steps": "many"}, "'steps' must be an integer"),
    ({"image": "a.png", "map": "m.png", "prompt": "x", "steps": 0}, "steps must be a positive integer"),
    ({"image": "a.png", "map": "m.png", "prompt": "x", "seed": -1}, "seed must be a non-negative"),
    ({"image": "a.png", "map": "m.png", "prompt": "x", "id": "../escape"}, "not a safe file name"),
])
def test_bad_rows_are_named(record: dict[str, Any], needle: str, tmp_path: Path) -> None:
    (row,) = build_rows([(record, False)], tmp_path)
    assert isinstance(row, BadRow) and needle in row.error, row


def test_defaults_fill_rows_and_apply_only_where_they_fit(tmp_path: Path) -> None:
    defaults = {"prompt": "p", "steps": 7, "strength": 0.6, "softness": 4.0, "polarity": "keep", "num_maps": 3,
                "map": str(tmp_path / "shared-map.png")}
    recs = [({"image": "photos/a b.png"}, False),  # no kind: the default --map
            ({"image": "b.png", "mask": "k.png", "steps": 9}, False),
            ({"image": "c.png", "source_prompt": "a photo", "prompt": "q"}, False)]
    a, b, c = build_rows(recs, tmp_path, defaults)
    assert isinstance(a, Row) and isinstance(b, Row) and isinstance(c, Row)
    assert (a.kind, a.source, a.id, a.image) == ("map", str(tmp_path / "shared-map.png"), "a_b-1",
                                                 str(tmp_path / "photos" / "a b.png"))
    assert a.settings["steps"] == 7 and a.settings["polarity"] == "keep" and "softness" not in a.settings
    assert "num_maps" not in a.settings or a.settings["num_maps"] == 10  # only source rows use num_maps
    assert b.settings["steps"] == 9 and b.settings["softness"] == 4.0 and b.settings["polarity"] == "change"
    assert c.settings["prompt"] == "q" and c.settings["num_maps"] == 3 and c.settings["strength"] == 0.6


def test_second_run_on_the_same_folder_is_refused(tmp_path: Path, sd_editor: diffdiff.Editor) -> None:
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / batch.LOCK_FILE, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(diffdiff.DiffDiffError, match="another diffdiff batch run is writing"):
            batch.run(SIX_ROWS[:1], out, sd_editor)
    assert not (out / "results.jsonl").exists()


def test_duplicate_ids_and_output_clashes(tmp_path: Path) -> None:
    recs = [({"id": "x", "image": "a.png", "map": "m.png", "prompt": "p", "num_images": 2}, False),
            ({"id": "x", "image": "b.png", "map": "m.png", "prompt": "p"}, False),
            ({"id": "x-1", "image": "c.png", "map": "m.png", "prompt": "p"}, False),
            (read_manifest(_write_jsonl(tmp_path / "j.jsonl", [{}]))[0][0], False)]
    rows = build_rows(recs, tmp_path)
    assert isinstance(rows[0], Row) and rows[0].outputs == ("x-1.png", "x-2.png")
    assert isinstance(rows[1], BadRow) and "duplicate id 'x'" in rows[1].error
    assert isinstance(rows[2], BadRow) and "'x-1.png' is also written by row 'x'" in rows[2].error
    assert isinstance(rows[3], BadRow) and "missing field 'image'" in rows[3].error


def test_crash_between_png_and_line_redoes_that_row_once(inputs: Path, sd_editor: diffdiff.Editor, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "image": f"img{i}.png", "map": "map.png", "prompt": "a cat", "steps": 2, "seed": i}
            for i in range(3)]
    out = tmp_path / "out"
    first = batch.run(rows, out, sd_editor, base_dir=inputs)
    assert (first.done, first.failed, first.skipped) == (3, 0, 0)
    log = out / "results.jsonl"
    kept = log.read_text().splitlines()[:2]
    # r2's PNG is complete but its line never made it; a torn half line ends the log; a temp file is left.
    log.write_text("\n".join(kept) + "\n" + '{"id": "r2", "status": "o')
    (out / ".r9.png.abc123.tmp").write_bytes(b"partial")
    before = _pixels(out / "r2.png")
    second = batch.run(rows, out, sd_editor, base_dir=inputs)
    assert (second.done, second.failed, second.skipped) == (1, 0, 2)
    lines = _lines(out)  # every line parses: the torn one was cut off
    assert [r["id"] for r in lines] == ["r0", "r1", "r2"]
    assert np.array_equal(before, _pixels(out / "r2.png"))  # same seed: the same image, replaced atomically
    assert not list(out.glob(".*.tmp"))


def test_killed_process_resumes_without_duplicates(inputs: Path, tiny_sd_path: Path, tmp_path: Path) -> None:
    n = 12
    for i in range(n):
        sample_image(64, 64, seed=i).save(tmp_path / f"k{i}.png")
    gradient_map(64, 64).save(tmp_path / "map.png")
    manifest = _write_jsonl(tmp_path / "kill.jsonl", [
        {"id": f"k{i}", "image": f"k{i}.png", "map": "map.png", "prompt": "a cat", "seed": i} for i in range(n)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffdiff", "batch", str(manifest), "-o", str(out), "--model", str(tiny_sd_path),
           "--steps", "4"]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = {r["id"] for r in _lines(out)}
    assert 3 <= len(done_before) < n
    for png in out.glob("*.png"):  # whatever exists is complete
        with Image.open(png) as im:
            im.load()
    res = runner.invoke(app, cmd[3:])  # the same command again, in this process (saves a start-up)
    assert res.exit_code == 0, res.output
    assert f"{n - len(done_before)} done, 0 failed, {len(done_before)} skipped" in res.output
    ids = [r["id"] for r in _lines(out)]
    assert sorted(ids) == sorted(f"k{i}" for i in range(n))  # each row exactly once
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"k{i}.png" for i in range(n))
    assert not list(out.glob(".*.tmp"))


class _UnetCalls:
    """Batch size of every UNet forward call."""

    def __init__(self, editor: diffdiff.Editor) -> None:
        self.sizes: list[int] = []
        self._h = editor.pipe.unet.register_forward_pre_hook(lambda m, a, k: self.sizes.append(int(a[0].shape[0]))
                                                             if a else self.sizes.append(int(k["sample"].shape[0])),
                                                             with_kwargs=True)

    def close(self) -> None:
        self._h.remove()


@pytest.mark.filterwarnings("ignore::diffdiff.DiffDiffWarning")
def test_group_size_one_call_per_row_unless_same_seedless_edit(inputs: Path, sd_editor: diffdiff.Editor,
                                                               tmp_path: Path) -> None:
    steps, cfg = 2, 2  # the tiny SD model runs classifier-free guidance: 2 UNet rows per image
    rows = [{"id": "a", "image": "img0.png", "map": "map.png", "prompt": "a cat", "steps": steps, "seed": 1},
            {"id": "b", "image": "img1.png", "map": "map.png", "prompt": "a dog", "steps": steps, "seed": 2},
            {"id": "c", "image": "img2.png", "map": "map.png", "prompt": "a cow", "steps": steps, "seed": 3,
             "num_images": 3}]
    calls = _UnetCalls(sd_editor)
    try:
        batch.run(rows, tmp_path / "plain", sd_editor, base_dir=inputs, group_size=8)
        assert calls.sizes == [cfg] * steps + [cfg] * steps + [3 * cfg] * steps  # one call per row
        calls.sizes.clear()
        same = [{"id": f"v{i}", "image": "img0.png", "map": "map.png", "prompt": "a fox", "steps": steps}
                for i in range(3)]
        s = batch.run(same, tmp_path / "grouped", sd_editor, base_dir=inputs, group_size=8)
        assert calls.sizes == [3 * cfg] * steps  # three seedless identical rows: ONE call of 3 images
    finally:
        calls.close()
    assert s.done == 3
    lines = {r["id"]: r for r in _lines(tmp_path / "grouped")}
    seed = lines["v0"]["seed"]
    assert {r["seed"] for r in lines.values()} == {seed}
    expected = sd_editor.edit(inputs / "img0.png", inputs / "map.png", "a fox", num_inference_steps=steps, seed=seed,
                              num_images=3)
    for i in range(3):  # image i of that one call, as `diffdiff edit --seed S --num-images 3` makes it
        assert np.array_equal(_pixels(tmp_path / "grouped" / f"v{i}.png"), np.asarray(expected[i]))
        assert read_metadata(tmp_path / "grouped" / f"v{i}.png")["index"] == i


def test_ray_missing_says_how_to_install(inputs: Path, tiny_sd_path: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delitem(sys.modules, "diffdiff.batch_ray", raising=False)
    manifest = _write_jsonl(tmp_path / "m.jsonl", SIX_ROWS[:1])
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "o"), "--model", str(tiny_sd_path),
                              "--ray", "auto", "--workers", "1"])
    assert res.exit_code == 1
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and 'pip install "diffdiff[ray]"' in errors[0], res.output
    assert not (tmp_path / "o").exists()


def test_model_loaded_once_for_the_batch(inputs: Path, tiny_sd_path: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real = diffdiff.Editor.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type, model: Any, *a: Any, **kw: Any) -> diffdiff.Editor:
        loads.append(str(model))
        return real(cls, model, *a, **kw)

    monkeypatch.setattr(diffdiff.Editor, "from_pretrained", classmethod(counting))
    rows = [{"image": f"img{i}.png", "map": "map.png", "prompt": "a cat", "steps": 2} for i in range(3)]
    s = batch.run(rows, tmp_path / "o", str(tiny_sd_path), base_dir=inputs)
    assert s.done == 3 and loads == [str(tiny_sd_path)]


def test_progress_bar_and_no_model_load_when_nothing_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def no_model() -> diffdiff.Editor:
        raise AssertionError("the model must not be loaded when no row can run")

    s = batch.run([{"image": "a.png", "map": "m.png"}], tmp_path / "o", no_model, progress=True)
    assert (s.done, s.failed) == (0, 1) and "missing field 'prompt'" in s.failures[0][1]
    err = capsys.readouterr().err
    assert "1/1" in err and "failed=1" in err and "row" in err  # tqdm: rows done, failures, ETA/rate


def test_workers_without_ray_is_an_error(tmp_path: Path, sd_editor: diffdiff.Editor) -> None:
    with pytest.raises(diffdiff.DiffDiffError, match="go with ray"):
        batch.run(SIX_ROWS[:1], tmp_path / "o", sd_editor, workers=2)


# ---------------------------------------------------------------------------------------------------
# Ray: a local cluster started here
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = SRC + (os.pathsep + old if old else "")  # workers import this checkout
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the dying factory below
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _dying_editor(model: str, victim: str, marker: str, loads: str) -> Any:
    """An editor whose worker process is killed (SIGKILL) the first time any worker edits ``victim``.

    Each load appends the loading process's id to the file ``loads``.
    """
    with open(loads, "a") as f:
        f.write(f"{os.getpid()}\n")
    ed = load_model(model)
    real_edit = ed.edit_with  # the batch runner builds one EditRequest per unit and calls edit_with

    def edit(image: Any, change_map: Any, request: Any) -> Any:
        if request.prompt == victim:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_edit(image, change_map, request)

    ed.edit_with = edit  # type: ignore[method-assign]
    return ed


def test_ray_two_workers_actor_killed_mid_run(ray_cluster: Any, inputs: Path, tiny_sd_path: Path,
                                              sd_editor: diffdiff.Editor, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "image": f"img{i % 4}.png", "map": "map.png", "prompt": f"prompt {i}", "steps": 2,
             "seed": i} for i in range(6)]
    rows.append({"id": "bad", "image": "img0.png", "map": "wide.png", "prompt": "x", "steps": 2, "seed": 9})
    rows.append({"id": "gone", "image": "gone.png", "map": "map.png", "prompt": "x", "steps": 2})  # never sent
    marker = tmp_path / "killed.pid"
    loads = tmp_path / "loads.txt"
    factory = functools.partial(_dying_editor, str(tiny_sd_path), "prompt 3", str(marker), str(loads))
    out = tmp_path / "ray"
    s = batch.run(rows, out, factory, base_dir=inputs, ray="auto", workers=2)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker process really died
    assert s.retried >= 1 and (s.done, s.failed) == (6, 2), s
    pids = loads.read_text().split()
    assert len(pids) == len(set(pids)) == 3  # the model loaded once per actor: 2 workers + 1 replacement
    lines = _lines(out)
    assert sorted(r["id"] for r in lines) == sorted(r["id"] for r in rows)  # nothing lost, nothing doubled
    assert "aspect ratios differ" in next(r for r in lines if r["id"] == "bad")["error"]
    assert "does not exist" in next(r for r in lines if r["id"] == "gone")["error"]
    local = batch.run(rows[:6], tmp_path / "local", sd_editor, base_dir=inputs)
    assert local.done == 6
    for i in range(6):  # same pixels and metadata as the local run
        assert np.array_equal(_pixels(out / f"r{i}.png"), _pixels(tmp_path / "local" / f"r{i}.png"))
        assert read_metadata(out / f"r{i}.png") == read_metadata(tmp_path / "local" / f"r{i}.png")


def test_ray_pool_one_actor_per_gpu_or_n_cpu_workers(ray_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffdiff import batch_ray

    monkeypatch.setattr(batch_ray.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 4.0})
    assert batch_ray.plan_workers(None) == [(1, 1)] * 4
    monkeypatch.setattr(batch_ray.ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(diffdiff.DiffDiffError, match="no GPUs; pass --workers N"):
        batch_ray.plan_workers(None)
    assert batch_ray.plan_workers(2) == [(1, 0), (1, 0)]
    with pytest.raises(diffdiff.DiffDiffError, match="needs 3 CPUs; the Ray cluster has 2"):
        batch_ray.plan_workers(3)
    monkeypatch.setattr(batch_ray.ray, "cluster_resources", lambda: {"CPU": 16.0})
    monkeypatch.setattr(batch_ray.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}] * 2)
    assert batch_ray.plan_workers(4) == [(4, 0)] * 4  # the CPUs shared out
    assert batch_ray.plan_workers(3) == [(4, 0)] * 3  # 5 each would not fit three on two 8-CPU nodes


def test_ray_connect_auto_address_and_errors(ray_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffdiff import batch_ray

    assert batch_ray.connect("auto") is False  # already initialised (the fixture): used as it is
    calls: list[Any] = []
    monkeypatch.setattr(batch_ray.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(batch_ray.ray, "init", lambda address=None, **kw: calls.append(address))
    assert batch_ray.connect("auto") is True and batch_ray.connect("10.0.0.5:6379") is True
    assert calls == [None, "10.0.0.5:6379"]  # auto: ray.init() without an address

    def refuse(address: Any = None, **kw: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nmore detail")

    monkeypatch.setattr(batch_ray.ray, "init", refuse)
    with pytest.raises(diffdiff.DiffDiffError, match=r"^cannot connect to the Ray cluster at 'x:1': Could not find any running Ray instance\.$"):
        batch_ray.connect("x:1")


def test_ray_shared_storage_workers_write_by_path(ray_cluster: Any, inputs: Path, tiny_sd_path: Path,
                                                  tmp_path: Path) -> None:
    rows = [{"id": f"s{i}", "image": f"img{i}.png", "mask": "mask.png", "prompt": "a cat", "seed": i} for i in range(2)]
    rows.append({"id": "missing", "image": "nope.png", "map": "map.png", "prompt": "x"})
    manifest = _write_jsonl(inputs / "shared.jsonl", rows)
    out = tmp_path / "shared"
    res = runner.invoke(app, ["batch", str(manifest), "-o", str(out), "--model", str(tiny_sd_path), "--steps", "2",
                              "--softness", "2", "--ray", "auto", "--workers", "1", "--shared-storage"])
    assert res.exit_code == 1, res.output
    assert "batch: 2 done, 1 failed, 0 skipped (done before) of 3 rows" in res.output
    assert "failed: missing: image file" in res.output and "does not exist" in res.output
    meta = read_metadata(out / "s1.png")
    assert meta["tool"] == "soft-inpaint" and meta["softness"] == 2.0 and meta["seed"] == 1


def _no_model() -> str:
    return "no model"


def _die_on_poison(editor: str, unit: str) -> str:
    if unit == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{editor}: {unit}"


def test_ray_pool_gives_up_on_a_unit_that_always_kills_its_worker(ray_cluster: Any) -> None:
    from diffdiff import batch_ray

    done: list[tuple[str, str]] = []
    lost: list[tuple[str, str]] = []
    retried = batch_ray.run_units(["a", "poison", "b", "c"], factory=_no_model, work_fn=_die_on_poison,
                                  on_done=lambda u, r: done.append((u, r)), on_lost=lambda u, e: lost.append((u, e)),
                                  workers=1, max_attempts=2)
    assert sorted(done) == [("a", "no model: a"), ("b", "no model: b"), ("c", "no model: c")]
    assert lost == [("poison", "a Ray worker died 2 times running this row")]
    assert retried >= 1
    assert batch_ray.MAX_ATTEMPTS == 3  # the README's number
