"""Video edit / plain video-to-video, per video family, on the tiny models of ``diffdiff.testing_video``.

    python benchmarks/bench_video.py              # 9 frames at 128x128, 8 steps, 7 pairs (a few minutes)
    python benchmarks/bench_video.py --quick      # 9 frames at 64x64, 4 steps, 3 pairs

Each row times ``Editor.edit_video`` (a left-right gradient map, so every latent frame is graded)
against the same pipeline called as plain diffusers video-to-video with the same seed, steps,
size and frames, interleaved after a warm-up of each (the harness's pair ratios), checks that
both make the same network calls (forward hooks), and times our own code directly (outside the
pipeline call plus inside the step hook), the overhead without the machine's noise. The table replaces the "## Video" section of
``benchmarks/RESULTS.md`` (``run.py`` keeps it when it rewrites its own table).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  # type: ignore[import-not-found]
    HERE,
    PROMPT,
    machine,
    network_calls,
    own_code_ms,
    quartiles,
    quiet,
    secs,
    threads,
    timings,
    write_section,
)

HEADING = "## Video"


def model_calls(pipe: Any, fn: Callable[[], Any]) -> dict[str, int]:
    """How often ``fn`` runs each network of ``pipe`` (denoiser, VAE encoder and decoder, text encoder)."""
    return network_calls([pipe], fn)



def bench(frames_n: int, size: int, steps: int, reps: int) -> list[str]:
    import numpy as np
    import torch

    from diffdiff import Editor
    from diffdiff.testing_video import build_tiny_animatediff, build_tiny_cogvideox, build_tiny_wan, sample_clip

    rows = []
    builders = {"wan": build_tiny_wan, "cogvideox": build_tiny_cogvideox, "animatediff": build_tiny_animatediff}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builders.items():
            ed = Editor.from_pretrained(build(Path(tmp) / name), progress=False)
            n = ed.adapter.run_frames(frames_n)  # a clip the VAE packs without padding: the same frames both sides
            clip = sample_clip(n, size, size, seed=1)
            ramp = np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))

            def edit(ed: Any = ed, clip: Any = clip, ramp: Any = ramp) -> Any:
                return ed.edit_video(clip, ramp, PROMPT, num_inference_steps=steps, seed=3)

            def plain(ed: Any = ed, clip: Any = clip) -> Any:
                with torch.inference_mode():
                    return ed.pipe(video=clip, prompt=PROMPT, num_inference_steps=steps, strength=1.0, height=size,
                                   width=size, generator=torch.Generator().manual_seed(3), output_type="np").frames

            ta, tb = timings([edit, plain], reps)
            ratios = [x / y for x, y in zip(ta, tb)]
            lo, hi = quartiles(ratios)
            same = model_calls(ed.pipe, edit) == model_calls(ed.pipe, plain)
            calls = "same model calls" if same else "MODEL CALLS DIFFER"
            own = own_code_ms(ed, edit, max(2, reps // 2))
            base = statistics.median(tb)
            row = (f"| video edit / video-to-video | {name} {n} frames {size}x{size}, {steps} steps ({calls}; "
                   f"pair ratios {lo:.3f}-{hi:.3f}; our code {own:.1f} ms = {own / 1000 / base:.1%}) "
                   f"| {secs(statistics.median(ta))} | {secs(base)} | {statistics.median(ratios):.3f} | <= 1.02 |")
            print(row, flush=True)
            rows.append(row)
    return rows


def section(rows: list[str], mode: str, seconds: float, n_threads: int) -> str:
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        HEADING, "",
        f"`python benchmarks/bench_video.py{' --quick' if mode == 'quick' else ''}`, {when}, {seconds:.0f} s. "
        f"Machine: {machine(n_threads)}.", "",
        "Tiny random-weight video models (`diffdiff.testing_video`); a left-right gradient map on every frame, "
        "strength 1, CFG at each pipeline's default. Ratios are medians of interleaved pairs.", "",
        "| benchmark | setting | diffdiff | baseline | ratio | goal |", "|---|---|---|---|---|---|", *rows,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    threads()
    quiet()
    import torch

    t0 = time.perf_counter()
    frames_n, size, steps, reps = (9, 64, 4, 3) if args.quick else (9, 128, 8, 7)
    rows = bench(frames_n, size, steps, reps)
    text = section(rows, "quick" if args.quick else "full", time.perf_counter() - t0, torch.get_num_threads())
    if not args.no_write:
        write_section(args.output, HEADING, text)
        print(f"wrote the '{HEADING}' section of {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
