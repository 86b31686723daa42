"""``diffdiff edit-video``: Differential Diffusion on a clip with a per-frame (or per-clip) change map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import info, load_editor, run_command


def register(app: typer.Typer) -> None:
    @app.command("edit-video")
    def edit_video(
        video: Path = typer.Argument(..., help="Clip to edit: .mp4, .gif, .webp or a folder of frames."),
        change_map: Optional[Path] = typer.Option(None, "--map", "-m", help="Change map: one image for every frame, a map video of the same length, or a folder of per-frame maps (white = change)."),
        map_ramp: Optional[str] = typer.Option(None, "--map-ramp", metavar="START:END", help="Scale frame k's map by a factor growing linearly from START (first frame) to END (last), e.g. 0:1 (alone: the ramp is the map)."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="What the edited clip should show."),
        output: Path = typer.Option(..., "--output", "-o", help="Output .mp4, .gif, .webp (metadata in OUT.json) or a new folder of PNG frames."),
        negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Negative prompt."),
        model: Optional[str] = typer.Option(None, "--model", help="Video-to-video model: hub id or local diffusers folder (Wan 2.x)."),
        steps: int = typer.Option(50, "--steps", "-s", help="Number of inference steps."),
        guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (default: the model's)."),
        strength: float = typer.Option(1.0, "--strength", help="Maximum strength, reached where the map is white (0..1)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (recorded in the metadata)."),
        polarity: str = typer.Option("change", "--polarity", help="'change': white = change (default). 'keep': white = keep."),
        paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Copy untouched (map = 0) pixels of every frame back exactly."),
        fps: Optional[float] = typer.Option(None, "--fps", help="Output frame rate (default: the input's)."),
        max_frames: int = typer.Option(257, "--max-frames", help="Refuse clips (and map videos) longer than this many frames."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, mps or cpu (default: best available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: fp16 on GPU, fp32 on CPU)."),
    ) -> None:
        """Edit VIDEO: each pixel of each frame changes as much as its change map allows."""

        def body() -> None:
            from ..errors import DiffDiffError
            from ..request import EditRequest
            from ..video import check_video_output, load_video_maps, parse_ramp, read_video, write_video

            # Everything the user gave is checked before a model is loaded.
            if change_map is None and map_ramp is None:
                raise DiffDiffError("pass --map MAP, --map-ramp START:END, or both")
            if fps is not None and not fps > 0:
                raise DiffDiffError(f"--fps must be positive, got {fps}")
            ramp = parse_ramp(map_ramp) if map_ramp is not None else None
            frames, in_fps = read_video(video, "video", max_frames)
            maps = load_video_maps(change_map, len(frames), frames[0].size, polarity, ramp, max_frames)  # type: ignore[arg-type]
            check_video_output(output)
            request = EditRequest(prompt=prompt, negative_prompt=negative, num_inference_steps=steps,
                                  guidance_scale=guidance, strength=strength, seed=seed, polarity=polarity,  # type: ignore[arg-type]
                                  paste_back=paste_back,
                                  metadata={"video_file": video.name,
                                            **({"map_file": change_map.name} if change_map is not None else {})})
            ed = load_editor(model, None, device, dtype)
            out = ed.edit_video(frames, maps, request.prompt, negative_prompt=request.negative_prompt,
                                num_inference_steps=steps, guidance_scale=guidance, strength=strength, seed=seed,
                                polarity="change", paste_back=paste_back, max_frames=max_frames,
                                metadata=dict(request.metadata, polarity=polarity,
                                              map_ramp=list(ramp) if ramp is not None else None))
            meta = dict(out[0].info.get("diffdiff", {}))
            meta.pop("frame", None)
            for path in write_video(out, output, fps or in_fps, meta):
                info(f"wrote {path}")

        run_command(body)
