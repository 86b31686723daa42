"""Edit from text alone: an automatic change map, a graded edit with it, and DiffEdit proper.

    python examples/diffedit_from_text.py IMAGE --source "a bowl of fruits" --target "a bowl of pears" \
        [--model stabilityai/stable-diffusion-2-1-base] [--out-dir out/]

Without IMAGE/--model it runs offline on a tiny random-weight model (outputs look like noise but
every step runs). Writes auto_map.png, graded.png (Differential Diffusion with the continuous map),
diffedit.png and diffedit_mask.png (the binary mask DiffEdit used).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from diffdiff import Editor, save_png_atomic
from diffdiff.cli.common import quiet_third_party
from diffdiff.testing import build_tiny_sd, sample_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", help="image to edit (default: a generated test picture)")
    ap.add_argument("--source", default="a bowl of fruits", help="what the image shows")
    ap.add_argument("--target", default="a bowl of pears", help="what it should show")
    ap.add_argument("--model", help="SD 1.x/2.x or SDXL model (default: a tiny offline model)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    args = ap.parse_args()
    quiet_third_party(True)  # diffusers' config deprecation chatter

    model = args.model or build_tiny_sd(Path(tempfile.mkdtemp()) / "tiny-sd")
    editor = Editor.from_pretrained(model)
    image = args.image or sample_image(256, 256)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    # 1. Where should the edit go? A continuous map: bright where the prompts disagree most.
    change = editor.auto_map(image, args.source, args.target, seed=args.seed)
    save_png_atomic(change, args.out_dir / "auto_map.png", change.info["diffdiff"])

    # 2. Differential Diffusion with that map: the edit fades out where the model is unsure.
    graded = editor.edit(image, change, args.target, num_inference_steps=args.steps, seed=args.seed)[0]
    save_png_atomic(graded, args.out_dir / "graded.png", graded.info["diffdiff"])

    # 3. DiffEdit: binary mask (map > 0.5), DDIM inversion, regenerate inside the mask only.
    edited = editor.diffedit(image, args.source, args.target, num_inference_steps=args.steps, seed=args.seed)[0]
    save_png_atomic(edited, args.out_dir / "diffedit.png", edited.info["diffdiff"])
    mask = editor.last_diffedit.mask
    from PIL import Image

    Image.fromarray((mask * 255).astype("uint8"), "L").save(args.out_dir / "diffedit_mask.png")
    print(f"mask covers {mask.mean():.0%} of the image; wrote 4 files to {args.out_dir}")


if __name__ == "__main__":
    main()
