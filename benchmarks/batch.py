"""Benchmark: rows per minute of batch editing, four ways, side by side in one run.

1. ``diffdiff edit`` once per row: a new process per row, so every row pays Python start-up,
   imports and the model load (what people do from a shell loop).
2. ``diffdiff batch MANIFEST``: one process, the model loaded once.
3. ``diffdiff batch --ray auto --workers 1``: a local Ray cluster, one actor.
4. ``diffdiff batch --ray auto --workers 2``: two actors (each loads the model once).

Every mode is a real command in a fresh process and is timed end to end (start-up, Ray start,
model loads included). "Steady" rows/min leaves start-up out: rows after the first, over the time
from the first to the last result line (``finished_at`` in ``results.jsonl``); for the CLI loop it
equals the end-to-end rate, since each row starts from nothing. Each mode's outputs are checked
(one ok line per row, one PNG per row) before its time counts.

The model is the tiny random-weight SD of :mod:`diffdiff.testing` (built here, no download);
rows are 256x256 left-right gradient-map edits with 10 steps, distinct seeds.

Run: ``python benchmarks/batch.py [--rows 12] [--cli-rows 4] [--size 256] [--steps 10] [--no-write]``;
it prints a table and ratios and replaces the "## Batch" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

# run.py sets the offline hub, passive OpenMP waiting and quiet warnings on import, before torch loads.
from harness import HERE, machine, write_section  # type: ignore[import-not-found]  # same machine line as the main table

HEADING = "## Batch"
SRC = str(HERE.parent / "src")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cli(args: list[str], timeout: float) -> None:
    res = subprocess.run([sys.executable, "-m", "diffdiff", *args], env=_env(), capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"diffdiff {args[0]} failed ({res.returncode}): {res.stderr.strip().splitlines()[-1:]}")


def _check(outdir: Path, ids: list[str]) -> tuple[list[float], float]:
    """Each row ok exactly once with its PNG; the finished_at stamps (sorted) and the median edit seconds."""
    lines = [json.loads(s) for s in (outdir / "results.jsonl").read_text().splitlines()]
    ok = sorted(r["id"] for r in lines if r["status"] == "ok")
    if ok != sorted(ids) or not all((outdir / f"{i}.png").is_file() for i in ids):
        raise RuntimeError(f"{outdir}: expected one ok line and PNG per row, got {ok}")
    return sorted(r["finished_at"] for r in lines), statistics.median(r["seconds"] for r in lines)


def _steady(stamps: list[float]) -> float:
    span = stamps[-1] - stamps[0]
    return 60.0 * (len(stamps) - 1) / span if len(stamps) > 1 and span > 0 else float("nan")


def bench(rows: int, cli_rows: int, size: int, steps: int, timeout: float) -> dict[str, Any]:
    from diffdiff.testing import build_tiny_sd, gradient_map, sample_image

    work = Path(tempfile.mkdtemp(prefix="diffdiff-bench-batch-"))
    model = build_tiny_sd(work / "tiny-sd")
    gradient_map(size, size).save(work / "map.png")
    for i in range(rows):
        sample_image(size, size, seed=i).save(work / f"img{i}.png")
    records = [{"id": f"r{i}", "image": f"img{i}.png", "map": "map.png", "prompt": "a watercolour landscape",
                "seed": i} for i in range(rows)]
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ["--model", str(model), "--steps", str(steps)]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    results: dict[str, Any] = {"rows": rows, "cli_rows": cli_rows, "size": size, "steps": steps, "modes": {},
                               "load_start": load}

    # 1. one CLI call per row (fewer rows: each costs a full start-up)
    out = work / "cli"
    out.mkdir()
    t0 = time.perf_counter()
    for r in records[:cli_rows]:
        _cli(["edit", str(work / r["image"]), "--map", str(work / "map.png"), "-p", r["prompt"], "--seed",
              str(r["seed"]), "-o", str(out / f"{r['id']}.png"), *common], timeout)
    wall = time.perf_counter() - t0
    results["modes"]["cli per row"] = {"rows": cli_rows, "wall_s": wall, "rpm": 60 * cli_rows / wall,
                                       "steady_rpm": 60 * cli_rows / wall, "edit_s": None}

    ids = [r["id"] for r in records]
    for name, extra in (("diffdiff batch", []), ("ray, 1 worker", ["--ray", "auto", "--workers", "1"]),
                        ("ray, 2 workers", ["--ray", "auto", "--workers", "2"])):
        out = work / re.sub(r"\W+", "-", name)
        t0 = time.perf_counter()
        _cli(["batch", str(manifest), "-o", str(out), *common, *extra], timeout)
        wall = time.perf_counter() - t0
        stamps, per_row = _check(out, ids)
        results["modes"][name] = {"rows": rows, "wall_s": wall, "rpm": 60 * rows / wall, "steady_rpm": _steady(stamps),
                                  "edit_s": per_row}
    m = results["modes"]
    results["batch_vs_cli"] = m["diffdiff batch"]["rpm"] / m["cli per row"]["rpm"]
    results["ray2_vs_ray1"] = m["ray, 2 workers"]["rpm"] / m["ray, 1 worker"]["rpm"]
    results["ray2_vs_ray1_steady"] = m["ray, 2 workers"]["steady_rpm"] / m["ray, 1 worker"]["steady_rpm"]
    return results


def table(res: dict[str, Any], seconds: float) -> str:
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        HEADING,
        "",
        f"`python benchmarks/batch.py`, {when}, {seconds:.0f} s. Machine: {machine()}.",
        "",
        f"{res['rows']} rows ({res['cli_rows']} for the CLI loop) of {res['size']}x{res['size']} gradient-map edits, "
        f"{res['steps']} steps, tiny random-weight SD; every mode a fresh process, timed end to end (start-up, "
        "Ray start and model loads included). Steady = rows after the first over the time from the first to the "
        "last result; one CLI call per row has no steady state (each row starts from nothing). Edit s/row = the "
        "`seconds` of the result lines (the edit alone, the same code in every mode): compare it across modes before "
        "comparing their rates. "
        f"Load average at the start: {res['load_start']}.",
        "",
        "| mode | rows | wall time | rows/min | steady rows/min | edit s/row (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["modes"].items():
        edit = "n/a" if r["edit_s"] is None else f"{r['edit_s']:.2f} s"
        lines.append(f"| {name} | {r['rows']} | {r['wall_s']:.1f} s | {r['rpm']:.1f} | {r['steady_rpm']:.1f} | {edit} |")
    lines += [
        "",
        f"- `diffdiff batch` / one CLI call per row: {res['batch_vs_cli']:.1f}x the rows per minute (goal >= 3x)",
        f"- Ray 2 workers / 1 worker: {res['ray2_vs_ray1']:.2f}x end to end, {res['ray2_vs_ray1_steady']:.2f}x steady "
        f"(goal >= 1.8x where the machine has the cores; this one has {os.cpu_count()}, shared)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12, help="rows for the batch and Ray modes")
    ap.add_argument("--cli-rows", type=int, default=4, help="rows for the one-CLI-call-per-row loop")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per command")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = bench(args.rows, args.cli_rows, args.size, args.steps, args.timeout)
    text = table(res, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        write_section(args.output, HEADING, text)
        print(f"wrote the '{HEADING}' section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
