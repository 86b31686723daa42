"""Add-ons at full change (issue 13): an edit vs diffusers' own pipeline with the same add-on.

    python benchmarks/bench_addons.py             # 256², 8 steps, 15 interleaved pairs each (~2 min on 2 cores)
    python benchmarks/bench_addons.py --quick     # 128², 4 steps, 5 pairs
    python benchmarks/bench_addons.py --no-write  # print only

For each add-on (a 9-channel inpainting checkpoint, Flux Fill, a ControlNet, a LoRA at 0.8, an IP-Adapter) the
edit with an all-white map at strength 1 is timed side by side with the same pipeline called
directly (same weights, seed, steps, size and add-on inputs), and the denoiser / ControlNet / VAE
calls of both are counted with forward hooks: at full change the edit must make exactly the
pipeline's model calls, and its time must stay within 2 % (goal <= 1.02). The tiny random-weight
models of :mod:`diffdiff.testing_addons` are used; the table goes to ``benchmarks/ADDONS.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

# harness.py sets the offline hub, passive OpenMP waiting and quiet warnings on import, before torch loads.
from harness import HERE, PROMPT, machine, network_calls, quiet, secs, side_by_side, threads  # type: ignore[import-not-found]


def counted_calls(pipe: Any, fn: Callable[[], Any]) -> dict[str, int]:
    """Forward calls of the pipeline's denoiser, ControlNet and VAE halves during ``fn()``."""
    return network_calls([pipe], fn, keys=("unet", "controlnet", "vae", "image_encoder"))



def cases(root: Path, size: int) -> list[tuple[str, Any, dict[str, Any], dict[str, Any]]]:
    """(name, editor, edit keywords, the plain pipeline's extra keywords) for each add-on."""
    from PIL import Image

    from diffdiff import Editor
    from diffdiff.testing import build_tiny_flux, build_tiny_sd, sample_image
    from diffdiff.testing_addons import (
        build_tiny_controlnet,
        build_tiny_flux_fill,
        build_tiny_inpaint,
        build_tiny_ip_adapter,
        save_random_lora,
    )

    sd = build_tiny_sd(root / "sd")
    control, ref = sample_image(size, size, seed=8), sample_image(size, size, seed=9)
    white = Image.new("L", (size, size), 255)
    out = []
    inpaint = Editor.from_pretrained(build_tiny_inpaint(root / "inpaint", base_model=sd), progress=False)
    out.append(("inpainting checkpoint (9-ch UNet)", inpaint, {}, {"mask_image": white}))
    fill = Editor.from_pretrained(build_tiny_flux_fill(root / "fill", build_tiny_flux(root / "flux")), progress=False)
    out.append(("Flux Fill", fill, {}, {"mask_image": white}))
    cn = Editor.from_pretrained(sd, controlnet=build_tiny_controlnet(root / "cn", sd), progress=False)
    out.append(("ControlNet", cn, {"control_image": control, "controlnet_conditioning_scale": 0.7},
                {"control_image": control, "controlnet_conditioning_scale": 0.7}))
    lora = Editor.from_pretrained(sd, lora=[f"{save_random_lora(sd, root / 'lora')}:0.8"], progress=False)
    out.append(("LoRA (scale 0.8)", lora, {}, {}))
    ip = Editor.from_pretrained(sd, ip_adapter=build_tiny_ip_adapter(root / "ip", sd), ip_adapter_scale=0.6,
                                progress=False)
    out.append(("IP-Adapter (scale 0.6)", ip, {"ip_adapter_image": ref}, {"ip_adapter_image": ref}))
    return out


def bench(size: int, steps: int, reps: int) -> list[str]:
    import numpy as np
    import torch
    from PIL import Image

    from diffdiff.testing import sample_image

    img = sample_image(size, size, seed=3)
    white = Image.new("L", (size, size), 255)
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffdiff-addons-") as tmp:
        for name, ed, edit_kw, plain_kw in cases(Path(tmp), size):
            def edit(ed: Any = ed, edit_kw: dict[str, Any] = edit_kw) -> Any:
                return ed.edit(img, white, PROMPT, num_inference_steps=steps, seed=3, **edit_kw)

            def plain(ed: Any = ed, plain_kw: dict[str, Any] = plain_kw) -> Any:
                with torch.inference_mode():
                    return ed.pipe(prompt=PROMPT, image=img, strength=1.0, num_inference_steps=steps, height=size,
                                   width=size, generator=torch.Generator().manual_seed(3), **plain_kw).images

            same = counted_calls(ed.pipe, edit) == counted_calls(ed.pipe, plain)
            equal = np.array_equal(np.asarray(edit()[0]), np.asarray(plain()[0]))
            t_edit, t_plain, ratio = side_by_side(edit, plain, reps)
            note = ("same model calls" if same else "MODEL CALLS DIFFER") + ("; identical image" if equal else "")
            family = "flux" if "Flux" in name else "sd"
            row = (f"| edit / pipeline with the add-on | {name}, {family} {size}², {steps} steps, all-white map ({note}) "
                   f"| {secs(t_edit)} | {secs(t_plain)} | {ratio:.3f} | <= 1.02 |")
            print(row, flush=True)
            rows.append(row)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128², 4 steps, 5 pairs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: min(2, cores)]")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--output", type=Path, default=HERE / "ADDONS.md")
    args = ap.parse_args(argv)
    threads(args.threads)
    quiet()
    size, steps, reps = (128, 4, 5) if args.quick else (256, 8, 15)
    t0 = time.perf_counter()
    print("| benchmark | setting | diffdiff | baseline | ratio | goal |", flush=True)
    rows = bench(size, steps, reps)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = "\n".join([
        "# Add-ons at full change: edit / diffusers pipeline with the same add-on", "",
        f"`python benchmarks/bench_addons.py{' --quick' if args.quick else ''}`, {when}, "
        f"{time.perf_counter() - t0:.0f} s. Machine: {machine()}.", "",
        "Interleaved pairs, medians of the per-pair ratios (see RESULTS.md for how to read them). "
        "\"identical image\": the edit's output equals the pipeline's, byte for byte.", "",
        "| benchmark | setting | diffdiff | baseline | ratio | goal |", "|---|---|---|---|---|---|", *rows, "",
    ])
    if not args.no_write:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
