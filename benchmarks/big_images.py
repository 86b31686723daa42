"""Big images on the CPU (issue #7): wall time and peak memory of one edit per resolution.

    python benchmarks/big_images.py                      # 1024, 2048, 4096 (+ 2048 untiled), ~5 min on 2 cores
    python benchmarks/big_images.py --sizes 1024,2048    # a subset
    python benchmarks/big_images.py --no-write           # print only

Each edit runs in a fresh subprocess with :func:`diffdiff.testing.build_tiny_sd_deep` (a tiny SD whose
UNet attends only at latent/8, so a 4096² image means 64² = 4096 attention tokens, not the 65k of
``build_tiny_sd``): load, warm up at 64², then one full-frame edit (left-right gradient map, 2 steps,
seed 0). The VAE is tiled and sliced by :func:`diffdiff.perf.configure_memory` on its own above
``AUTO_TILING_PIXELS``; ``--untiled`` sizes repeat an edit with that switched off, for comparison.
Peak RSS is ``ru_maxrss`` of the child (the whole process: Python, torch, model, edit); "extra" is
that peak minus the RSS just before the edit, i.e. what the edit itself needed.

The table replaces the "## Big images" section of ``benchmarks/RESULTS.md`` (appended if absent);
the rest of that file is left as it is.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

# harness.py sets the offline hub, passive OpenMP waiting and quiet warnings on import, before torch loads.
from harness import HERE, PROMPT, machine, write_section  # same machine line as the main benchmark table

HEADING = "## Big images"
MIB = 2**20


def child(model: str, size: int, steps: int, tiling: bool, threads: int) -> None:
    """In a fresh process: one edit at ``size``², print a JSON line with time and memory."""
    import psutil
    import torch

    torch.set_num_threads(threads)
    from diffdiff import Editor, perf
    from diffdiff.cli.common import quiet_third_party
    from diffdiff.testing import gradient_map, sample_image

    quiet_third_party(True)
    if not tiling:
        perf.AUTO_TILING_PIXELS = 1 << 62  # read at call time by configure_memory
    ed = Editor.from_pretrained(model, progress=False)
    ed.edit(sample_image(64, 64), gradient_map(64, 64), PROMPT, num_inference_steps=2, seed=0)  # lazy inits
    img, cmap = sample_image(size, size, seed=1), gradient_map(size, size)
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    out = ed.edit(img, cmap, PROMPT, num_inference_steps=steps, seed=0)[0]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({
        "size": size, "seconds": seconds, "peak": peak, "before": before, "extra": max(0, peak - before),
        "tiled": bool(getattr(ed.pipe.vae, "use_tiling", False)), "out": list(out.size),
    }))


def run_child(model: Path, size: int, steps: int, tiling: bool, threads: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", str(model), "--size", str(size),
           "--steps", str(steps), "--threads", str(threads)] + ([] if tiling else ["--untiled-child"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"child exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section(rows: list[dict[str, Any]], failures: list[str], steps: int, threads: int, seconds: float) -> str:
    from diffdiff.perf import AUTO_TILING_PIXELS, MIN_TILE

    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    side = int(AUTO_TILING_PIXELS**0.5)
    lines = [
        HEADING,
        "",
        f"`python benchmarks/big_images.py`, {when}, {seconds:.0f} s. Machine: {machine(threads)}.",
        "",
        f"One full-frame edit per row (left-right gradient map, {steps} steps, seed 0, CFG on) with "
        "`diffdiff.testing.build_tiny_sd_deep` (tiny SD, UNet attention only at latent/8), each in a fresh "
        f"process. The VAE is tiled ({MIN_TILE} px tiles) and sliced automatically above {side}x{side}; "
        "\"untiled\" rows switch that off for comparison. Peak RSS is the whole process (Python, torch, "
        "model and edit); extra is the peak above the RSS just before the edit.",
        "",
        "| image | wall time | peak RSS | extra for the edit | tiled VAE |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        label = f"{r['size']}x{r['size']}" + ("" if r["want_tiling"] else " (untiled)")
        lines.append(f"| {label} | {r['seconds']:.1f} s | {r['peak'] / MIB:.0f} MiB | {r['extra'] / MIB:.0f} MiB "
                     f"| {'on' if r['tiled'] else 'off'} |")
    for f in failures:
        lines.append(f"\n- {f}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096", help="comma list of square image sides")
    ap.add_argument("--untiled", default="2048", help="sides to repeat with automatic VAE tiling off ('' for none)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: min(2, cores)]")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per edit")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--untiled-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    if args.child:
        child(args.model, args.size, args.steps, not args.untiled_child, threads)
        return 0

    from diffdiff.testing import build_tiny_sd_deep

    t_start = time.perf_counter()
    plan = [(int(s), True) for s in args.sizes.split(",") if s.strip()]
    plan += [(int(s), False) for s in args.untiled.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="diffdiff-big-") as tmp:
        model = build_tiny_sd_deep(Path(tmp) / "tiny-sd-deep")
        print("| image | wall s | peak RSS MiB | extra MiB | tiling |", flush=True)
        for size, tiling in plan:
            try:
                res = run_child(model, size, args.steps, tiling, threads, args.timeout)
            except Exception as exc:  # a timeout or a crash is a result too
                failures.append(f"{size}x{size}{'' if tiling else ' untiled'}: failed ({exc})")
                print(failures[-1], flush=True)
                continue
            res["want_tiling"] = tiling
            rows.append(res)
            print(f"| {size}x{size}{'' if tiling else ' (untiled)'} | {res['seconds']:.1f} | {res['peak'] / MIB:.0f} "
                  f"| {res['extra'] / MIB:.0f} | {'on' if res['tiled'] else 'off'} |", flush=True)
    text = section(rows, failures, args.steps, threads, time.perf_counter() - t_start)
    if args.no_write:
        print(text)
    else:
        write_section(args.output, HEADING, text)
        print(f"wrote the '{HEADING}' section of {args.output}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
