"""Quality of the packaged micro model on held-out shapes-world images: writes benchmarks/QUALITY.md.

    python benchmarks/quality.py            # 40 held-out seeds per row (a few minutes on 2 CPU cores)
    python benchmarks/quality.py --seeds 8  # quicker

Each row is measured by :mod:`diffdiff.micro.quality` through the public ``Editor`` API on seeds
from ``shapes.HELDOUT_START`` (never used in training), next to the issue's floor. The last
section searches the automatic map's settings (noise level, smoothing, normalisation, threshold)
for the best IoU with the true object mask, which is the evidence for the defaults.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def _fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


#: Maps are fetched once per (noise level, smoothing) with a wide normalisation (white at this many
#: times the mean), so every cut "raw > k x mean" can be read off one map: with clamp_ratio c and
#: threshold t the mask is raw > t*c x mean, i.e. k = t*c.
WIDE = 8.0

#: Softness values (fall-off sigma, px) the soft-inpainting rows sweep; the floor is read at SOFT_FLOOR_AT.
SOFTNESS = (4.0, 6.0, 8.0)
SOFT_FLOOR_AT = 6.0
#: Images of the position-balanced band row (5 edits each).
BALANCED_IMAGES = 20


def map_search(editor, seeds: list[int]) -> tuple[list[dict], dict]:
    """IoU of the automatic mask with the true mask over noise level, smoothing and cut k = t * c."""
    from diffdiff.micro import quality

    strengths, smooths = (0.3, 0.5, 0.7, 0.9), (0.0, 0.5, 1.0, 2.0)
    ks = [round(k, 2) for k in np.arange(0.3, 4.01, 0.1)]
    rows = []
    cases = [quality.diffedit_case(s) for s in seeds]
    for es, sm in itertools.product(strengths, smooths):
        maps = [np.asarray(editor.auto_map(image, src, tgt, encode_strength=es, seed=s, smooth=sm, clamp_ratio=WIDE),
                           np.float32) / 255 for s, (image, _, src, tgt) in zip(seeds, cases)]
        for k in ks:
            ious = [quality.iou(m > k / WIDE, c[1]) for m, c in zip(maps, cases)]
            rows.append({"encode_strength": es, "smooth": sm, "k": k, "iou": float(np.mean(ious)),
                         "iou_min": float(np.min(ious))})
    best = max(rows, key=lambda r: round(r["iou"], 3))
    return rows, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--map-seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="micro")
    parser.add_argument("--out", type=Path, default=HERE / "QUALITY.md")
    parser.add_argument("--no-search", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from diffdiff import Editor
    from diffdiff.cli.common import quiet_third_party
    from diffdiff.micro import quality
    from diffdiff.micro.quality import FLOORS, heldout

    quiet_third_party(True)
    t0 = time.time()
    ed = Editor.from_pretrained(args.model, progress=False, device="cpu")
    seeds = [heldout(i) for i in range(args.seeds)]
    n, steps = len(seeds), args.steps
    rows: list[tuple[str, str, str, str, Optional[bool]]] = []  # None: informational

    psnr = quality.vae_psnr(ed.pipe, [heldout(i) for i in range(256)])
    rows.append(("VAE round trip PSNR (256 images)", f"mean {_fmt(statistics.mean(psnr))} dB, min {_fmt(min(psnr))}",
                 f">= {FLOORS['vae_psnr_db']:.0f} dB (mean)", "", statistics.mean(psnr) >= FLOORS["vae_psnr_db"]))

    adh = quality.prompt_adherence(ed, seeds, steps)
    acc = float(np.mean([a.ok for a in adh]))
    shape_ok = float(np.mean([a.got[0] == a.want[0] for a in adh]))
    bg_ok = float(np.mean([a.got[1] == a.want[1] for a in adh]))
    rows.append(("Prompt adherence at full change", f"{acc:.0%} both (shape colour {shape_ok:.0%}, background {bg_ok:.0%})",
                 f">= {FLOORS['prompt_adherence']:.0%}", f"{n} prompts", acc >= FLOORS["prompt_adherence"]))

    def band_row(summary, what: str) -> str:
        return (f"mean change per {what} over seeds {', '.join(f'{c:.1f}' for c in summary.means)}: Spearman of the "
                f"means {summary.spearman_of_means:.2f}; each rise > 0 at 95 % (paired bootstrap lower bounds "
                f"{', '.join(f'{v:.1f}' for v in summary.rise_low)}); per image Spearman 1.0 in "
                f"{summary.per_image_perfect:.0%}; {what} 0 byte-identical: {summary.band0_identical}")

    bands = quality.summarise_bands(quality.band_adherence(ed, seeds, steps), quality.BANDS)
    rows.append(("DD band adherence (bands 0, .25, .5, .75, 1)", band_row(bands, "band"),
                 "Spearman 1.0 over seeds, band 0 identical", f"{n} images",
                 bands.spearman_of_means >= FLOORS["band_spearman"] and bands.band0_identical))

    balanced = quality.summarise_bands(quality.band_adherence_balanced(ed, seeds[:BALANCED_IMAGES], steps),
                                       quality.BANDS)
    rows.append(("DD bands, position-balanced per image (5 runs, levels rotated)",
                 f"per image Spearman 1.0 in {balanced.per_image_perfect:.0%}; mean change per level "
                 f"{', '.join(f'{c:.1f}' for c in balanced.means)}", "(informational: no floor)",
                 f"{min(n, BALANCED_IMAGES)} images", None))

    fans = quality.summarise_bands(quality.fan_monotonic(ed, seeds, steps), np.linspace(0, 1, 5))
    rows.append(("Strength fan (5 columns, 0..1)", band_row(fans, "column"),
                 "change rises with strength (Spearman 1.0 over seeds)", f"{n} images",
                 fans.spearman_of_means >= FLOORS["fan_spearman"] and fans.band0_identical))

    softs = {sf: quality.soft_inpaint_border(ed, seeds, softness=sf, steps=steps) for sf in SOFTNESS}
    pooled = {sf: float(np.mean([r.soft for r in v]) / np.mean([r.hard for r in v])) for sf, v in softs.items()}
    median = {sf: float(np.median([r.ratio for r in v])) for sf, v in softs.items()}
    by_sf = ", ".join(f"{sf:g} px {_fmt(pooled[sf])}" for sf in SOFTNESS)
    rows.append(("Soft-inpainting border gradient energy, soft / hard, pooled (mean soft / mean hard)",
                 f"softness {by_sf}", f"<= {FLOORS['soft_border_ratio']} at softness {SOFT_FLOOR_AT:g} px",
                 f"{n} holes", pooled[SOFT_FLOOR_AT] <= FLOORS["soft_border_ratio"]))
    rows.append(("Soft-inpainting, the same per hole (median of soft / hard)",
                 "softness " + ", ".join(f"{sf:g} px {_fmt(median[sf])}" for sf in SOFTNESS)
                 + f"; worst at {SOFT_FLOOR_AT:g} px {_fmt(max(r.ratio for r in softs[SOFT_FLOOR_AT]))}",
                 f"<= {FLOORS['soft_border_ratio']} (the stricter reading)", f"{n} holes",
                 median[SOFT_FLOOR_AT] <= FLOORS["soft_border_ratio"]))

    de = quality.diffedit_quality(ed, seeds, steps)
    mean_iou = float(np.mean([d.iou for d in de]))
    rows.append(("DiffEdit automatic mask IoU (red -> blue circle)",
                 f"mean {_fmt(mean_iou)}, min {_fmt(min(d.iou for d in de))}",
                 f">= {FLOORS['diffedit_iou']}", f"{n} images", mean_iou >= FLOORS["diffedit_iou"]))
    col = float(np.mean([d.colour_fraction for d in de]))
    outside = float(np.mean([d.outside_change for d in de]))
    rows.append(("DiffEdit: object turns blue", f"{col:.0%} of object pixels nearest to blue",
                 f">= {FLOORS['diffedit_colour']:.0%}", f"{n} images", col >= FLOORS["diffedit_colour"]))
    rows.append(("DiffEdit: rest unchanged", f"mean change {_fmt(outside)}/255 outside the object (+2 px)",
                 f"<= {FLOORS['diffedit_outside_change']}/255", f"{n} images",
                 outside <= FLOORS["diffedit_outside_change"]))

    search_md = ""
    if not args.no_search:
        grid, best = map_search(ed, [heldout(1000 + i) for i in range(args.map_seeds)])
        (HERE / "quality_map_search.json").write_text(json.dumps(grid, indent=1))
        old = next(r for r in grid if (r["encode_strength"], r["smooth"], r["k"]) == (0.5, 1.0, 1.5))
        by_es = {es: max((r for r in grid if r["encode_strength"] == es), key=lambda r: r["iou"])
                 for es in sorted({r["encode_strength"] for r in grid})}
        by_sm = {sm: max((r for r in grid if r["smooth"] == sm), key=lambda r: r["iou"])
                 for sm in sorted({r["smooth"] for r in grid})}
        lines = ["", "## Automatic map: which settings localise best", "",
                 f"IoU of the automatic mask with the true object mask on {args.map_seeds} further held-out "
                 "red-to-blue circles (10 noise draws each). A map with `clamp_ratio` c thresholded at t marks "
                 "the cells whose smoothed difference exceeds k = t x c times its mean, so the table searches "
                 "k; full grid in `quality_map_search.json`.", "",
                 f"- Best: encode_strength {best['encode_strength']}, smooth {best['smooth']}, k {best['k']} "
                 f"(threshold 0.5 with clamp_ratio {2 * best['k']:.1f}): IoU {_fmt(best['iou'])} "
                 f"(worst image {_fmt(best['iou_min'])}).",
                 f"- The old defaults (encode_strength 0.5, smooth 1.0, clamp_ratio 3 at threshold 0.5, k 1.5): "
                 f"IoU {_fmt(old['iou'])}.", "",
                 "| encode_strength | best IoU | at smooth / k |", "|---|---|---|"]
        lines += [f"| {es} | {_fmt(r['iou'])} | {r['smooth']} / {r['k']} |" for es, r in by_es.items()]
        lines += ["", "| smooth (latent cells) | best IoU | at encode_strength / k |", "|---|---|---|"]
        lines += [f"| {sm} | {_fmt(r['iou'])} | {r['encode_strength']} / {r['k']} |" for sm, r in by_sm.items()]
        search_md = "\n".join(lines) + "\n"

    prov = json.loads((Path(ed.model_name) if Path(ed.model_name).is_dir() else _micro()).joinpath(
        "provenance.json").read_text())
    md = ["# Quality of the micro model", "",
          f"Generated by `python benchmarks/quality.py` on {_dt.date.today().isoformat()} "
          f"({time.time() - t0:.0f} s, {torch.get_num_threads()} CPU threads). Model: `{args.model}` "
          f"(UNet steps {prov.get('unet_steps')}, VAE steps {prov.get('vae_steps')}); held-out seeds from "
          f"{heldout(0)}; {steps} sampling steps, default guidance.", "",
          "| Row | Measured | Floor | Over | Meets |", "|---|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {'—' if r[4] is None else 'yes' if r[4] else '**NO**'} |" for r in rows]
    md += ["", "How each row is measured (code: `src/diffdiff/micro/quality.py`):", "",
           "- PSNR: VAE posterior mean decoded, 8-bit, per image.",
           "- Prompt adherence: all-white map, a seeded target caption whose shape colour and background colour both "
           "differ from the source image; the output's background is its most frequent nearest-palette colour and "
           "the shape's the next most frequent.",
           "- Bands: one edit per image with a 5-band map towards a different caption; mean |change| per band. The "
           "floor is read on the means over seeds (Spearman of the 5 means with the band levels); each adjacent "
           "rise also gets a paired bootstrap 95 % lower bound over images (> 0: the rise is not noise). Per image "
           "the ranking is reported but not floored: what sits in a band (the object, the new object) and "
           "saturation near full change (band .75 is already most of the way) reorder single images. Band 0 "
           "compared byte for byte. The position-balanced row runs each image 5 times with the levels rotated "
           "across the band positions, so each level covers every position once: what is left of the per-image "
           "disorder is saturation and sampling noise, not layout.",
           "- Fan: `Editor.fan` with 5 columns at strengths 0..1; the same statistics per column.",
           "- Soft-inpainting: hole = object's bounding box + 5 px, prompt = same caption with a new shape colour; "
           "energy = median over the hole's border (2 px either side, not where the hole meets the frame) of "
           "|grad(out - src)|^2, the gradient of the change, so only seams the edit made count (the median: a new "
           "object's own edges crossing the border do not dominate); soft (softness 4) vs the same hole as a hard "
           "map; pooled = mean soft / mean hard, per hole = median of the ratios. The issue fixes no softness: the rows "
           "sweep 4, 6 and 8 px (on a 64 px image) and read the floor at 6 px. Per hole the ratio stays near 0.8: "
           "ring pixels just outside the hole (map near 1) change almost fully, as band .75 does, so much of the "
           "seam moves outwards rather than softening where it is measured.",
           "- DiffEdit: `a red circle on a X background` to `a blue circle on a X background`; the automatic mask "
           "(default settings) vs the rendered object mask; colour = nearest palette colour of the object's pixels "
           "after `diffedit`; rest = mean |change| outside the object grown by 2 px."]
    text = "\n".join(md) + "\n" + search_md
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    print(text)
    return 0 if all(r[4] is not False for r in rows) else 1


def _micro() -> Path:
    from diffdiff.micro import model_path

    return model_path()


if __name__ == "__main__":
    sys.exit(main())
