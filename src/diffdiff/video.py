"""Videos and spatio-temporal change maps: frames in and out, map videos, ramps, latent-frame maps.

This module owns everything about video that is not a model:

* reading a clip (MP4, GIF, WebP through imageio and its ffmpeg plugin, or a folder of frames)
  with a frame limit, and writing one atomically (a PNG frame folder keeps the metadata in each
  frame's text chunks; MP4/GIF/WebP get a sidecar ``OUT.json``);
* reading the change map of a clip: one image for every frame, a map video of the same length or
  a folder of per-frame maps, optionally scaled by a temporal ramp (``--map-ramp START:END``);
* resampling a per-frame map onto the latent grid in space *and* time. Video VAEs compress
  frames: Wan and CogVideoX keep the first frame alone and pack every further ``t`` frames (t = 4)
  into one latent frame. Each frame's map is first box-filtered onto the latent grid (as for
  images, :func:`diffdiff.changemap.to_latent_map`); a latent frame then takes the **maximum**
  over the frames it covers, so no frame changes less than its map asks;
* per-frame paste-back: pixels whose own frame's map is exactly 0 are copied from the input.

imageio is an optional dependency (``pip install diffdiff[video]``); it is imported when a video
file is read or written, with a one-line error naming the extra when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from .changemap import MapLike, Polarity, check_aspect, map_to_array, paste_back, resize_array, to_latent_map
from .errors import DiffDiffError
from .io import METADATA_KEY, open_image, pnginfo_for

#: Container formats read and written through imageio (a folder of frames is the fourth form).
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".webp")
#: Image formats accepted as frames of a frame folder.
FRAME_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: Longest clip accepted by default (frames); CLI ``--max-frames``.
DEFAULT_MAX_FRAMES = 257
#: Frame rate used when a source records none.
DEFAULT_FPS = 8.0

VideoLike = Union[str, os.PathLike, Sequence[Image.Image], np.ndarray]


# reading clips ---------------------------------------------------------------------------------------
def _imageio() -> Any:
    try:
        import imageio.v3 as iio
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise DiffDiffError("reading and writing videos needs imageio: pip install 'diffdiff[video]'") from exc
    return iio


def _natural_key(path: Path) -> list[Any]:
    """Sort ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name.lower())]


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder in natural order (hidden files skipped)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES
                   and not p.name.startswith(".")), key=_natural_key)


def check_frame_limit(count: int, max_frames: Optional[int], what: str = "video") -> None:
    if max_frames is not None and count > max_frames:
        raise DiffDiffError(f"{what} has more than {max_frames} frames, above the limit; "
                            "trim the clip or raise the limit with --max-frames (max_frames=)")


def read_video(path: str | os.PathLike[str], what: str = "video",
               max_frames: Optional[int] = DEFAULT_MAX_FRAMES) -> tuple[list[Image.Image], float]:
    """The RGB frames of a clip file or frame folder, and its frame rate; one-line errors.

    Reading stops as soon as the clip passes ``max_frames``, so an over-long video costs little.
    """
    p = Path(path)
    if not p.exists():
        raise DiffDiffError(f"{what} '{p}' does not exist")
    if p.is_dir():
        files = frame_files(p)
        if not files:
            raise DiffDiffError(f"{what} folder '{p}' holds no image frames ({', '.join(FRAME_SUFFIXES)})")
        check_frame_limit(len(files), max_frames, f"{what} '{p}'")
        frames = [_rgb(open_image(f, f"{what} frame")) for f in files]
        fps = DEFAULT_FPS
    else:
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            raise DiffDiffError(f"{what} '{p}' must be {', '.join(VIDEO_SUFFIXES)} or a folder of frames")
        frames, fps = _read_clip(p, what, max_frames)
    if not frames:
        raise DiffDiffError(f"{what} '{p}' has no frames")
    check_same_size(frames, what)
    return frames, fps


def _read_clip(p: Path, what: str, max_frames: Optional[int]) -> tuple[list[Image.Image], float]:
    iio = _imageio()
    plugin = "FFMPEG" if p.suffix.lower() == ".mp4" else "pillow"
    frames: list[Image.Image] = []
    try:
        for arr in iio.imiter(p, plugin=plugin):
            frames.append(_rgb(Image.fromarray(np.asarray(arr))))
            check_frame_limit(len(frames), max_frames, f"{what} '{p}'")
        if plugin == "FFMPEG":
            meta = dict(iio.immeta(p, plugin=plugin))
        else:  # GIF/WebP: per-frame durations; merged still frames last a multiple of the shortest
            durations = [d for d in _durations(p) if d > 0]
            meta = {"duration": min(durations)} if durations else {}
    except DiffDiffError:
        raise
    except PermissionError as exc:
        raise DiffDiffError(f"{what} '{p}' cannot be read: permission denied") from exc
    except Exception as exc:  # imageio/ffmpeg/pillow raise many kinds for corrupt input
        raise DiffDiffError(f"{what} '{p}' is not a readable video (unknown or corrupt format)") from exc
    return frames, _fps_of(meta)


def _fps_of(meta: Mapping[str, Any]) -> float:
    fps = meta.get("fps")
    if isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0:
        return float(fps)
    duration = meta.get("duration")  # GIF/WebP: milliseconds per frame
    if isinstance(duration, (int, float)) and duration > 0:
        return 1000.0 / float(duration)
    return DEFAULT_FPS


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def check_same_size(frames: Sequence[Image.Image], what: str = "video") -> None:
    first = frames[0].size
    for i, f in enumerate(frames):
        if f.size != first:
            raise DiffDiffError(f"{what} frame {i} is {f.size[0]}x{f.size[1]} but frame 0 is {first[0]}x{first[1]}")


def load_frames(video: VideoLike, max_frames: Optional[int] = DEFAULT_MAX_FRAMES) -> tuple[list[Image.Image], float]:
    """Frames from a path, a list of PIL images or a uint8 array (F, H, W, 3); and the frame rate."""
    if isinstance(video, (str, os.PathLike)):
        return read_video(video, "video", max_frames)
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise DiffDiffError(f"a video array must be uint8 (frames, height, width, 3), got {video.dtype} {video.shape}")
        video = [Image.fromarray(f, "RGB") for f in video]
    if not isinstance(video, Sequence) or not all(isinstance(f, Image.Image) for f in video):
        raise DiffDiffError("video must be a file or folder path, a list of PIL images or a uint8 array")
    if not video:
        raise DiffDiffError("video has no frames")
    check_frame_limit(len(video), max_frames)
    frames = [_rgb(f) for f in video]
    check_same_size(frames)
    return frames, DEFAULT_FPS


# change maps of a clip ---------------------------------------------------------------------------------
MapSource = Union[MapLike, str, os.PathLike, Sequence[Any], None]


def parse_ramp(text: str) -> tuple[float, float]:
    """``"START:END"`` (numbers in [0, 1]) as a pair."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = float(parts[0]), float(parts[1])
        check_ramp((start, end))
    except (ValueError, DiffDiffError):
        raise DiffDiffError(f"--map-ramp must be START:END with numbers in [0, 1] (e.g. 0:1), got {text!r}") from None
    return start, end


def check_ramp(ramp: Any) -> None:
    ok = isinstance(ramp, (tuple, list)) and len(ramp) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and 0 <= v <= 1 for v in ramp)
    if not ok:
        raise DiffDiffError(f"map ramp must be (start, end) with both in [0, 1], got {ramp!r}")


def ramp_values(count: int, start: float, end: float) -> np.ndarray:
    """Per-frame factors growing linearly from ``start`` (frame 0) to ``end`` (last frame)."""
    if count == 1:
        return np.array([end], dtype=np.float32)
    return np.linspace(start, end, count, dtype=np.float64).astype(np.float32)


def load_video_maps(change_map: MapSource, count: int, size: tuple[int, int], polarity: Polarity = "change",
                    ramp: Optional[tuple[float, float]] = None,
                    max_frames: Optional[int] = DEFAULT_MAX_FRAMES) -> np.ndarray:
    """The change map of every frame as a float32 (F, H, W) array at the frames' size (width, height).

    ``change_map``: one map for every frame (image, array, image file), a map video file or frame
    folder of exactly ``count`` frames, a list of per-frame maps, an array (F, H, W), or None with
    a ``ramp`` (the ramp alone). ``ramp`` = (start, end) multiplies frame k's map by a factor
    growing linearly from start to end: a change that grows over the clip.
    """
    width, height = size
    if change_map is None:
        if ramp is None:
            raise DiffDiffError("give a change map, a map ramp, or both")
        maps = np.ones((count, height, width), dtype=np.float32)
    else:
        maps = _read_maps(change_map, count, size, polarity, max_frames)
    if ramp is not None:
        check_ramp(ramp)
        maps = maps * ramp_values(count, *ramp)[:, None, None]
    return np.clip(maps, 0.0, 1.0).astype(np.float32)


def _read_maps(change_map: Any, count: int, size: tuple[int, int], polarity: Polarity,
               max_frames: Optional[int]) -> np.ndarray:
    width, height = size
    per_frame: list[Any]
    if isinstance(change_map, (str, os.PathLike)):
        p = Path(change_map)
        if p.is_dir() or p.suffix.lower() in (".mp4", ".gif") or (p.suffix.lower() == ".webp" and _frames_in(p) > 1):
            per_frame = _map_frames(p, max_frames, count)
        else:
            per_frame = [open_image(p, "change map")]
    elif isinstance(change_map, np.ndarray) and np.squeeze(change_map).ndim == 3 and change_map.shape[-1] not in (3, 4):
        per_frame = list(change_map)
    elif isinstance(change_map, torch.Tensor) and change_map.squeeze().ndim == 3:
        per_frame = list(change_map.squeeze())
    elif isinstance(change_map, (list, tuple)):
        per_frame = list(change_map)
    else:
        per_frame = [change_map]
    if len(per_frame) not in (1, count):
        raise DiffDiffError(f"the map video has {len(per_frame)} frames but the video has {count}; "
                            "give one map for every frame or a map video of the same length")
    arrays = [map_to_array(m, polarity) for m in per_frame]
    out = np.empty((count, height, width), dtype=np.float32)
    for i, arr in enumerate(arrays):
        h, w = arr.shape
        check_aspect((w, h), size)
        out[i] = resize_array(arr, width, height)
    if len(arrays) == 1:
        out[:] = out[0]
    return out


def _frames_in(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except Exception:
        return 1


def _map_frames(p: Path, max_frames: Optional[int], count: int) -> list[Image.Image]:
    """A map video's or map folder's frames, as greyscale images (a folder's files keep their modes).

    GIF and WebP encoders store identical consecutive frames once, with their durations summed
    (Pillow and libwebp both do), so a map clip that holds still comes back shorter. When its
    frame durations are whole multiples of (total duration / ``count``), each stored frame is
    repeated for the frames it stands for.
    """
    if p.is_dir():
        files = frame_files(p) if p.exists() else []
        if not files:
            raise DiffDiffError(f"change map folder '{p}' holds no image frames")
        check_frame_limit(len(files), max_frames, f"map video '{p}'")
        return [open_image(f, "change map frame") for f in files]
    frames, _ = read_video(p, "map video", max_frames)
    maps = [f.convert("L") for f in frames]
    if len(maps) != count and p.suffix.lower() in (".gif", ".webp"):
        maps = _expand_merged(maps, _durations(p), count)
    return maps


def _durations(p: Path) -> list[float]:
    """Each stored frame's duration in milliseconds (GIF/WebP), or [] when unknown."""
    try:
        with Image.open(p) as img:
            out = []
            for i in range(int(getattr(img, "n_frames", 1))):
                img.seek(i)
                img.load()  # WebP sets a frame's duration when it is decoded
                out.append(float(img.info.get("duration") or 0))
            return out
    except Exception:
        return []


def _expand_merged(maps: list[Image.Image], durations: list[float], count: int) -> list[Image.Image]:
    """Undo the encoders' merging of identical frames when the durations say how (else leave as read)."""
    if len(durations) != len(maps) or not all(d > 0 for d in durations):
        return maps
    unit = sum(durations) / count
    repeats = [round(d / unit) for d in durations]
    # GIF stores centiseconds, so durations may be off by up to 10 ms per stored frame.
    if sum(repeats) != count or any(r < 1 or abs(d - r * unit) > 10 for d, r in zip(durations, repeats)):
        return maps
    return [m for m, r in zip(maps, repeats) for _ in range(r)]


# latent-frame maps -----------------------------------------------------------------------------------
def latent_frame_groups(count: int, temporal: int, first_alone: bool = True) -> list[tuple[int, int]]:
    """Frames each latent frame covers, as [start, end) ranges.

    ``first_alone`` (Wan, CogVideoX): the first frame is a latent frame of its own and every
    further ``temporal`` frames share one, so ``count`` must be 1 + k * temporal. Otherwise frames
    are packed ``temporal`` at a time from the start.
    """
    if temporal < 1:
        raise ValueError("temporal compression must be >= 1")
    if first_alone:
        if (count - 1) % temporal:
            raise ValueError(f"{count} frames do not pack into latent frames (need 1 + k * {temporal})")
        return [(0, 1)] + [(1 + k * temporal, 1 + (k + 1) * temporal) for k in range((count - 1) // temporal)]
    if count % temporal:
        raise ValueError(f"{count} frames do not pack into latent frames (need k * {temporal})")
    return [(k * temporal, (k + 1) * temporal) for k in range(count // temporal)]


def padded_count(count: int, temporal: int, first_alone: bool = True) -> int:
    """The smallest frame count >= ``count`` that packs into whole latent frames."""
    if first_alone:
        return 1 + -(-(count - 1) // temporal) * temporal
    return -(-count // temporal) * temporal


def to_latent_video_map(change: np.ndarray, groups: Sequence[tuple[int, int]], latent_height: int,
                        latent_width: int) -> torch.Tensor:
    """A per-frame map (F, H, W) on the latent grid as (1, 1, latent frames, h, w).

    Space: each frame's map is box-filtered onto the grid as an image's would be. Time: a latent
    frame takes the maximum over the frames it covers, so no frame changes less than its map asks.
    """
    per_frame = torch.stack([to_latent_map(m, latent_height, latent_width)[0, 0] for m in change])
    latent = torch.stack([per_frame[a:b].amax(0) for a, b in groups])
    return latent[None, None]


def pad_frames(frames: list[Image.Image], change: np.ndarray, count: int) -> tuple[list[Image.Image], np.ndarray]:
    """Extend a clip to ``count`` frames by repeating its last frame (and that frame's map)."""
    extra = count - len(frames)
    if extra <= 0:
        return frames, change
    return frames + [frames[-1]] * extra, np.concatenate([change, np.repeat(change[-1:], extra, axis=0)])


def paste_back_frames(results: Sequence[Image.Image], originals: Sequence[Image.Image],
                      change: np.ndarray) -> list[Image.Image]:
    """Per frame: copy the original's pixels wherever that frame's map is exactly 0."""
    return [paste_back(r, o, c) for r, o, c in zip(results, originals, change)]


def frames_sha256(frames: Sequence[Image.Image]) -> str:
    """Hash of a clip's decoded pixels (size, mode and every frame in order)."""
    h = hashlib.sha256()
    for f in frames:
        h.update(f"{f.mode}:{f.size}".encode())
        h.update(f.tobytes())
    return h.hexdigest()


# writing clips ---------------------------------------------------------------------------------------
def check_video_output(path: str | os.PathLike[str]) -> Path:
    """Validate an output clip path before any work: a .mp4/.gif/.webp file or a new (or empty) folder."""
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES and p.suffix != "":
        raise DiffDiffError(f"output '{p}' must end in {', '.join(VIDEO_SUFFIXES)}, or name a folder for PNG frames")
    if p.suffix == "" and p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise DiffDiffError(f"output folder '{p}' already exists and is not empty")
    if p.suffix != "" and p.is_dir():
        raise DiffDiffError(f"output path '{p}' is a directory")
    parent = p.parent
    if not parent.exists():
        raise DiffDiffError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise DiffDiffError(f"output folder '{parent}' is not writable")
    return p


def sidecar_path(path: Path) -> Path:
    """Where a clip's metadata goes: ``clip.mp4`` -> ``clip.mp4.json``."""
    return path.with_name(path.name + ".json")


def write_video(frames: Sequence[Image.Image], path: str | os.PathLike[str], fps: float = DEFAULT_FPS,
                metadata: Optional[Mapping[str, Any]] = None) -> list[Path]:
    """Write a clip atomically; returns the paths written.

    A folder gets ``frame-00000.png``... with the metadata in each frame's PNG text chunks (the
    folder appears whole, by rename). MP4 (H.264), GIF and lossless WebP get a sidecar JSON
    ``OUT.json``; each file is written to a temporary name in the same folder and renamed.
    """
    p = check_video_output(path)
    if p.suffix == "":
        return [_write_frame_folder(frames, p, metadata)]
    iio = _imageio()
    arrays = np.stack([np.asarray(_rgb(f)) for f in frames])
    ext = p.suffix.lower()
    written = []
    fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=ext, dir=p.parent)
    os.close(fd)
    try:
        if ext == ".mp4":
            iio.imwrite(tmp, arrays, extension=ext, plugin="FFMPEG", fps=float(fps), macro_block_size=1)
        else:
            extra = {"lossless": True} if ext == ".webp" else {}
            iio.imwrite(tmp, arrays, extension=ext, plugin="pillow", duration=int(round(1000 / fps)), loop=0, **extra)
        _readable(tmp)
        os.replace(tmp, p)
    except BaseException as exc:
        _unlink(tmp)
        if isinstance(exc, Exception) and not isinstance(exc, DiffDiffError):
            raise DiffDiffError(f"could not write '{p}': {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        raise
    written.append(p)
    if metadata is not None:
        written.append(_write_json_atomic(sidecar_path(p), metadata))
    return written


def _write_frame_folder(frames: Sequence[Image.Image], p: Path, metadata: Optional[Mapping[str, Any]]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        for i, frame in enumerate(frames):
            meta = dict(metadata, frame=i) if metadata is not None else None
            _rgb(frame).save(tmp / f"frame-{i:05d}.png", format="PNG", pnginfo=pnginfo_for(meta) if meta else None)
        _readable(tmp, 0o777)
        if p.exists():
            p.rmdir()  # empty (checked); os.replace onto a directory needs it gone on some systems
        os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(data), f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        _readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return path


def _readable(path: str | os.PathLike[str], mode: int = 0o666) -> None:
    """Give a temporary file (created 0600) the permissions an ordinary new file gets (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _unlink(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_video_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parameters diffdiff recorded with a clip it wrote (sidecar JSON, or the first PNG frame)."""
    p = Path(path)
    if p.is_dir():
        files = frame_files(p)
        if not files:
            return {}
        with Image.open(files[0]) as img:
            text = img.info.get(METADATA_KEY)
        return json.loads(text) if text else {}
    side = sidecar_path(p)
    return json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
