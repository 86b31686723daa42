"""Video edit that runs anywhere, offline: a per-frame change map on a tiny random-weight Wan model.

    python examples/video_edit.py [--out-dir video-out]

Real use swaps the tiny model for a real one, e.g.
``diffdiff edit-video clip.mp4 --map map.png -p "a snowy street" -o out.mp4 --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.
This script builds a miniature Wan 2.x pipeline from configs, writes a 9-frame GIF, runs
``diffdiff edit-video`` with a left-half-keep map and a ramp (the change grows over the clip) into
a folder of PNG frames, and checks that the kept half of every frame is byte-identical.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("video-out"))
    args = parser.parse_args()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    from diffdiff.cli.common import quiet_third_party
    from diffdiff.io import read_metadata
    from diffdiff.testing_video import build_tiny_wan, half_map, sample_clip
    from diffdiff.video import read_video, write_video

    quiet_third_party(True)
    model = out_dir / "tiny-wan"
    if not (model / "model_index.json").exists():
        print(f"building a tiny random-weight Wan pipeline in {model}")
        build_tiny_wan(model)
    clip = sample_clip(9, 64, 48, seed=1)
    write_video(clip, out_dir / "clip.gif", fps=8)
    half_map(64, 48).save(out_dir / "map.png")
    frames = out_dir / "edited"
    if frames.exists():
        for p in frames.iterdir():
            p.unlink()
        frames.rmdir()
    cmd = [sys.executable, "-m", "diffdiff", "edit-video", str(out_dir / "clip.gif"), "--map", str(out_dir / "map.png"),
           "--map-ramp", "0:1", "-p", "a snowy street", "-o", str(frames), "--model", str(model), "--steps", "6",
           "--seed", "0"]
    print("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    src = [np.asarray(f) for f in read_video(out_dir / "clip.gif")[0]]  # the GIF's own (palette) pixels
    outs = sorted(frames.iterdir())
    kept = all(np.array_equal(np.asarray(Image.open(p))[:, :32], s[:, :32]) for p, s in zip(outs, src))
    print(f"{len(outs)} frames in {frames}; left half byte-identical in every frame: {kept}; "
          f"seed in the metadata: {read_metadata(outs[0])['seed']}")
    return 0 if kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
