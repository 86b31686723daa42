"""Make change maps, preview them, soft-inpaint a hole and fan strengths, from Python.

    python examples/maps_fan_softinpaint.py photo.png --model stabilityai/stable-diffusion-2-1-base
    python examples/maps_fan_softinpaint.py --tiny      # offline smoke run on a random tiny model

Writes into ./out-examples/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from diffdiff import Editor, maps, save_png_atomic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", help="image to edit (default: a generated test image)")
    ap.add_argument("--model", default=None, help="hub id, diffusers folder or .safetensors file")
    ap.add_argument("--tiny", action="store_true", help="use a tiny random-weight model (no download)")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()

    out = Path("out-examples")
    out.mkdir(exist_ok=True)
    if args.image:
        image = Image.open(args.image).convert("RGB")
    else:
        from diffdiff.testing import sample_image

        image = sample_image(256, 256, seed=0)
    w, h = image.size

    # 1. Maps: a radial vignette that changes the edges, combined with a soft hole in the middle.
    vignette = maps.gradient((w, h), "radial", start=0.0, end=0.8)
    hole = Image.new("L", (w, h), 0)
    hole.paste(255, (w * 3 // 8, h * 3 // 8, w * 5 // 8, h * 5 // 8))
    soft = maps.soft_map(hole, softness=w / 32)
    both = maps.combine([vignette, soft], "max")
    for name, m in (("vignette", vignette), ("soft", soft), ("combined", both)):
        save_png_atomic(m, out / f"map-{name}.png")
    # What an edit with 30 steps at strength 0.8 will really do with the combined map.
    save_png_atomic(maps.preview(image, both, steps=args.steps, strength=0.8), out / "preview.png")

    if args.tiny:
        from diffdiff.testing import build_tiny_sd

        model = build_tiny_sd(Path(tempfile.mkdtemp()) / "tiny-sd")
    else:
        model = args.model or "stabilityai/stable-diffusion-2-1-base"
    editor = Editor.from_pretrained(model)

    # 2. Soft-inpainting: regenerate the hole, let its surroundings adapt, keep the rest exact.
    [filled] = editor.soft_inpaint(image, hole, w / 32, "a bowl of fruit", num_inference_steps=args.steps, seed=1)
    save_png_atomic(filled, out / "soft-inpaint.png", filled.info["diffdiff"])

    # 3. Strength fan: five strengths side by side, in one edit.
    fan = editor.fan(image, "a watercolour painting", columns=5, num_inference_steps=args.steps, seed=1, labels=True)
    save_png_atomic(fan, out / "fan.png", fan.info["diffdiff"])
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} in {out}/")


if __name__ == "__main__":
    main()
