"""Benchmark: a strength fan (one edit) against one separate img2img edit per column.

The naive way to compare strengths is ``columns`` edits, one per strength, each over the whole
image; the fan is one Differential Diffusion edit at the largest strength. Repetitions are
interleaved (fan, separate, fan, separate, ...) so load drift hits both alike; medians are
reported. ``step_ratio`` is the ratio of denoising steps (fan: ``int(steps * max)``; separate:
the sum of ``int(steps * s)`` over the columns), the ratio the timing approaches when the UNet
dominates; per-edit overheads (text encoding, VAE) favour the fan further.

Run: ``python benchmarks/bench_fan.py [--columns 5] [--repeats 3] [--steps 10] [--size 64]``
(builds a tiny random-weight SD model; no download).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np


def bench_fan(editor: Any, columns: int = 5, repeats: int = 3, steps: int = 10, size: int = 64) -> dict[str, Any]:
    """Time ``editor.fan`` against ``columns`` separate edits; returns medians, ratio and the goal."""
    from diffdiff.fan import column_strengths
    from diffdiff.testing import sample_image

    image = sample_image(size, size, seed=0)
    full = np.ones((size, size), dtype=np.float32)  # uniform map: each separate edit is plain img2img
    strengths = column_strengths(columns, 0.0, 1.0)
    prompt = "a watercolour landscape"

    def run_fan() -> None:
        editor.fan(image, prompt, columns=columns, num_inference_steps=steps, seed=1)

    def run_separate() -> None:
        for s in strengths:
            editor.edit(image, full, prompt, num_inference_steps=steps, strength=s, seed=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only N steps" warnings at small step counts
        run_fan()  # warm-up: first calls allocate buffers and pick kernels
        run_separate()
        fan_times: list[float] = []
        sep_times: list[float] = []
        fan_cpu: list[float] = []
        sep_cpu: list[float] = []
        for _ in range(repeats):
            for fn, wall, cpu in ((run_fan, fan_times, fan_cpu), (run_separate, sep_times, sep_cpu)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    fan_s = statistics.median(fan_times)
    sep_s = statistics.median(sep_times)
    fan_steps = editor.planned_steps(steps, 1.0)
    sep_steps = sum(editor.planned_steps(steps, s) for s in strengths)
    goal = 1.0 / columns + 0.05
    ratio = fan_s / sep_s
    return {
        "columns": columns,
        "steps": steps,
        "size": size,
        "repeats": repeats,
        "fan_s": fan_s,
        "separate_s": sep_s,
        "ratio": ratio,
        "goal": goal,
        "meets_goal": ratio <= goal,
        "fan_unet_steps": fan_steps,
        "separate_unet_steps": sep_steps,
        "step_ratio": fan_steps / sep_steps if sep_steps else float("nan"),
        # CPU time of this process: less sensitive to other jobs on a shared machine.
        "fan_cpu_s": statistics.median(fan_cpu),
        "separate_cpu_s": statistics.median(sep_cpu),
        "ratio_cpu": statistics.median(fan_cpu) / statistics.median(sep_cpu),
        "fan_times": fan_times,
        "separate_times": sep_times,
    }


def main() -> None:
    import os
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for the tiny model on a busy machine)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from diffdiff import Editor
    from diffdiff.cli.common import quiet_third_party
    from diffdiff.testing import build_tiny_sd

    quiet_third_party(True)
    with tempfile.TemporaryDirectory() as tmp:
        editor = Editor.from_pretrained(build_tiny_sd(os.path.join(tmp, "tiny-sd")), progress=False)
        print(f"tiny SD, {args.size} px, {args.steps} steps, {args.threads} thread(s), "
              f"{args.repeats} interleaved repeats (medians)")
        print(f"{'columns':>7} {'fan s':>8} {'separate s':>10} {'ratio':>6} {'cpu ratio':>9} "
              f"{'steps ratio':>11} {'goal':>6}  ok")
        for c in args.columns:
            r = bench_fan(editor, columns=c, repeats=args.repeats, steps=args.steps, size=args.size)
            print(f"{c:>7} {r['fan_s']:>8.3f} {r['separate_s']:>10.3f} {r['ratio']:>6.3f} {r['ratio_cpu']:>9.3f} "
                  f"{r['step_ratio']:>11.3f} {r['goal']:>6.3f}  {'yes' if r['meets_goal'] else 'no'}")


if __name__ == "__main__":
    main()
