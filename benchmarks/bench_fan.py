"""Benchmark: a strength fan (one edit) against one separate edit per column.

The naive way to compare strengths is ``columns`` edits, one per strength, each over the whole
image (a uniform map: plain img2img at that strength, which runs ``int(steps * s)`` steps; the
strength-0 column costs nothing). The fan is one Differential Diffusion edit; with ``skip_frozen``
(its default) each step runs the model only on the columns free by then plus 32 px of context,
so its model work is about one full-frame edit spread over the columns: ``1/k`` of the separate
edits' work, plus context. ``--full-frame`` (skip_frozen=False) is timed too, for comparison:
it is bound by the step-count ratio ``steps / sum(int(steps * s))``.

All three run interleaved (rotating order) after a warm-up; medians of per-repetition ratios.

Run: ``python benchmarks/bench_fan.py [--columns 3 5 8] [--repeats 3] [--steps 10] [--size 512]``
(builds a tiny random-weight SD model; no download).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import timings  # noqa: E402  # type: ignore[import-not-found]


def bench_fan(editor: Any, columns: int = 5, repeats: int = 3, steps: int = 10, size: int = 512) -> dict[str, Any]:
    """Time ``editor.fan`` (skip_frozen on and off) against ``columns`` separate edits."""
    from diffdiff.fan import column_strengths
    from diffdiff.testing import sample_image

    image = sample_image(size, size, seed=0)
    full = np.ones((size, size), dtype=np.float32)  # uniform map: each separate edit is plain img2img
    strengths = column_strengths(columns, 0.0, 1.0)
    prompt = "a watercolour landscape"
    fractions: list[float] = []

    def run_fan() -> None:
        editor.fan(image, prompt, columns=columns, num_inference_steps=steps, seed=1)
        fractions[:] = editor.last_run.denoised_fractions

    def run_fan_full_frame() -> None:
        editor.fan(image, prompt, columns=columns, num_inference_steps=steps, seed=1, skip_frozen=False)

    def run_separate() -> None:
        for s in strengths:
            editor.edit(image, full, prompt, num_inference_steps=steps, strength=s, seed=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only N steps" warnings at small step counts
        fan_t, full_t, sep_t = timings([run_fan, run_fan_full_frame, run_separate], repeats)
    fan_steps = editor.planned_steps(steps, 1.0)
    sep_steps = sum(editor.planned_steps(steps, s) for s in strengths)
    return {
        "columns": columns,
        "steps": steps,
        "size": size,
        "repeats": repeats,
        "fan_s": statistics.median(fan_t),
        "fan_full_frame_s": statistics.median(full_t),
        "separate_s": statistics.median(sep_t),
        "ratio": statistics.median(a / b for a, b in zip(fan_t, sep_t)),
        "ratio_full_frame": statistics.median(a / b for a, b in zip(full_t, sep_t)),
        "goal": 1.0 / columns + 0.05,
        "step_ratio": fan_steps / sep_steps if sep_steps else float("nan"),
        # Model work of the fan in full-frame steps (sum of the grid fractions it ran on) / separate steps.
        "work_ratio": sum(fractions) / sep_steps if sep_steps else float("nan"),
    }


def main() -> None:
    import os
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
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
        print(f"{'columns':>7} {'fan s':>7} {'full-frame s':>12} {'separate s':>10} {'ratio':>6} "
              f"{'full-frame':>10} {'work':>6} {'steps':>6} {'goal':>6}  ok")
        for c in args.columns:
            r = bench_fan(editor, columns=c, repeats=args.repeats, steps=args.steps, size=args.size)
            print(f"{c:>7} {r['fan_s']:>7.3f} {r['fan_full_frame_s']:>12.3f} {r['separate_s']:>10.3f} "
                  f"{r['ratio']:>6.3f} {r['ratio_full_frame']:>10.3f} {r['work_ratio']:>6.3f} {r['step_ratio']:>6.3f} "
                  f"{r['goal']:>6.3f}  {'yes' if r['ratio'] <= r['goal'] else 'no'}")


if __name__ == "__main__":
    main()
