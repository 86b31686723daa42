"""Quickstart that runs anywhere, offline: a graded edit with a tiny random-weight model.

    python examples/quickstart.py [--out-dir quickstart-out]

Real use swaps the tiny model for a real one, e.g.
``diffdiff edit photo.png --map map.png --prompt "a wildfire" -o out.png`` (SDXL by default).
This script shows the whole path on a machine with no GPU and no model hub: build a miniature
SD pipeline from configs, save it, load it back through ``Editor.from_pretrained``, make a
gradient change map, run the ``diffdiff edit`` command and check the untouched pixels.
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
    parser.add_argument("--out-dir", type=Path, default=Path("quickstart-out"))
    args = parser.parse_args()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    from diffdiff.cli.common import quiet_third_party
    from diffdiff.io import read_metadata
    from diffdiff.testing import build_tiny_sd, sample_image

    quiet_third_party(True)
    model = out_dir / "tiny-sd"
    if not (model / "model_index.json").exists():
        print(f"building a tiny random-weight SD pipeline in {model}")
        build_tiny_sd(model)
    image, cmap, result = out_dir / "photo.png", out_dir / "map.png", out_dir / "edited.png"
    sample_image(128, 96, seed=1).save(image)

    # The toolkit command makes the map: left third kept exactly, then a ramp to full change.
    ramp = np.clip((np.arange(128) - 42) / 86, 0, 1)
    Image.fromarray(np.tile((ramp * 255).round().astype(np.uint8), (96, 1)), "L").save(cmap)

    cmd = [sys.executable, "-m", "diffdiff", "edit", str(image), "--map", str(cmap), "--prompt",
           "a wildfire in the forest", "--model", str(model), "--steps", "20", "--seed", "0", "-o", str(result)]
    print("$", " ".join(cmd[2:]).replace("-m diffdiff", "diffdiff"))
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        return proc.returncode

    src, out = np.asarray(Image.open(image)), np.asarray(Image.open(result))
    kept = np.array_equal(src[:, :42], out[:, :42])
    changed = np.abs(out[:, 100:].astype(int) - src[:, 100:]).mean()
    meta = read_metadata(result)
    print(f"untouched region byte-identical: {kept}; mean change where the map is white: {changed:.1f}/255")
    print(f"metadata: seed={meta['seed']} steps={meta['steps']} strength={meta['strength']} polarity={meta['polarity']}")
    print(f"wrote {result}")
    return 0 if kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
