"""What the REST API and the web UI share: one model, one worker at a time, a bounded queue.

The model is large and not thread-safe, so every job (an edit, a fan, an auto map) runs under one
lock, in a worker thread so the server's event loop stays responsive. At most ``queue_size`` jobs
may wait for that lock; a job beyond that is refused at once with :class:`QueueFull` (HTTP 503 with
``Retry-After``) instead of piling up until clients time out.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, Union

from PIL import Image, UnidentifiedImageError

from ..addon_inputs import controlnets_of, served_union_modes
from ..denoise import unsupported_reason
from ..errors import DiffDiffError
from ..io import pnginfo_for

T = TypeVar("T")

#: The operations the API and the UI offer, as :class:`~diffdiff.Editor` method names.
FEATURES = ("edit", "fan", "auto_map", "diffedit")
#: Those that call the denoiser directly, which only some families support (:mod:`diffdiff.denoise`).
NEEDS_NOISE_PREDICTOR = ("auto_map", "diffedit")

#: 2048 x 2048: larger inputs are refused (413) before they are decoded.
DEFAULT_MAX_PIXELS = 2048 * 2048
#: Jobs allowed to wait while one runs.
DEFAULT_QUEUE_SIZE = 4
#: Most inference steps one request may ask for (the schema's ``maximum`` for every steps field).
DEFAULT_MAX_STEPS = 500
#: Uploads above this many bytes are refused before they are parsed (also 413).
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: The most extra reference images one edit may carry, from the API or the UI (each is one more VAE
#: encode and prompt image).
MAX_REFERENCE_IMAGES = 8


class QueueFull(Exception):
    """Every waiting slot is taken; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in about {retry_after} s")
        self.retry_after = retry_after


class TooLarge(DiffDiffError):
    """An upload exceeds the configured pixel or byte limit (HTTP 413)."""


EditorSource = Union[Any, Callable[[], Any]]


class EditService:
    """Holds the editor (loaded lazily when given a loader) and serialises jobs on it."""

    def __init__(
        self,
        editor_or_loader: EditorSource,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        if max_pixels < 1:
            raise DiffDiffError(f"max_pixels must be positive, got {max_pixels}")
        if queue_size < 0:
            raise DiffDiffError(f"queue_size must be >= 0, got {queue_size}")
        if max_steps < 2:  # DiffEdit needs two steps (one inverted at its encode ratio of 0.5)
            raise DiffDiffError(f"max_steps must be >= 2, got {max_steps}")
        if max_upload_bytes < 1:
            raise DiffDiffError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
        # An Editor has .edit; anything else callable is a loader (tests pass a lambda).
        if hasattr(editor_or_loader, "edit"):
            self._editor: Any = editor_or_loader
            self._loader: Callable[[], Any] | None = None
        elif callable(editor_or_loader):
            self._editor = None
            self._loader = editor_or_loader
        else:
            raise TypeError("create_app needs an Editor or a function that returns one")
        self.max_pixels = int(max_pixels)
        self.queue_size = int(queue_size)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_steps = int(max_steps)
        self._worker = threading.Lock()  # the one model: one job at a time
        self._count_lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._avg_seconds = 5.0  # running mean job time, for Retry-After
        self.jobs_done = 0

    # the editor -----------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._editor is not None

    def editor(self) -> Any:
        """The editor; call only while holding the worker (loading is a job too)."""
        if self._editor is None:
            assert self._loader is not None
            self._editor = self._loader()
        return self._editor

    def features(self) -> dict[str, bool]:
        """Which operations the model can run: DiffEdit and auto maps need an SD or SDXL family (no IP-Adapter).

        Before a lazily loaded model is loaded its family is unknown; every feature is then
        reported available (a request for one the model lacks gets 501 once it is loaded).
        """
        ed = self._editor
        out = {}
        for name in FEATURES:
            if ed is None:
                out[name] = True
            elif not callable(getattr(ed, name, None)):
                out[name] = False
            else:
                out[name] = name not in NEEDS_NOISE_PREDICTOR or unsupported_reason(ed) is None
        return out

    def takes_references(self) -> bool:
        """Whether the model takes extra reference images (its adapter's ``reference_image``, e.g.
        Qwen-Image-Edit-Plus); before a lazily loaded model is loaded, as :meth:`features`: yes."""
        ed = self._editor
        return ed is None or bool(getattr(getattr(ed, "adapter", None), "reference_image", False))

    def union_modes(self) -> list[str]:
        """The control types of a served ControlNet Union (those it was trained with); none otherwise."""
        addons = getattr(self._editor, "addons", None)
        if addons is None or not addons.union:
            return []
        return list(served_union_modes(controlnets_of(self._editor.pipe)))

    # the queue ------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        with self._count_lock:
            admitted = self._admitted
        running = 1 if self._worker.locked() else 0
        return {"running": running, "waiting": max(0, admitted - running), "capacity": 1 + self.queue_size}

    @contextmanager
    def ticket(self) -> Iterator[None]:
        """Admit a job (running or waiting) or raise :class:`QueueFull` immediately."""
        with self._count_lock:
            if self._admitted >= 1 + self.queue_size:
                # Everyone ahead of us must finish first: estimate from the mean job time.
                raise QueueFull(max(1, math.ceil(self._avg_seconds * self._admitted)))
            self._admitted += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._admitted -= 1

    def run_locked(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(editor)`` under the worker lock (blocking; call from a worker thread)."""
        with self._worker:
            start = time.monotonic()
            try:
                return fn(self.editor())
            finally:
                took = time.monotonic() - start
                self._avg_seconds = 0.7 * self._avg_seconds + 0.3 * took if self.jobs_done else took
                self.jobs_done += 1

    def submit(self, fn: Callable[[Any], T]) -> T:
        """Admit and run synchronously (the UI's handlers already run in worker threads)."""
        with self.ticket():
            return self.run_locked(fn)

    # inputs ---------------------------------------------------------------------------------------
    def check_pixels(self, size: tuple[int, int], what: str) -> None:
        w, h = size
        if w * h > self.max_pixels:
            raise TooLarge(
                f"{what} is {w}x{h} = {w * h} pixels, above this server's limit of {self.max_pixels}; "
                "downscale it first"
            )

    def decode(self, data: bytes, what: str) -> Image.Image:
        """Decode uploaded bytes in memory (never a path on disk), refusing oversize images early."""
        if not data:
            raise DiffDiffError(f"{what} is empty (no file uploaded)")
        if len(data) > self.max_upload_bytes:
            raise TooLarge(f"{what} is {len(data)} bytes, above this server's limit of {self.max_upload_bytes}")
        try:
            img = Image.open(io.BytesIO(data))
            # The header gives the size: refuse huge images before decoding them (decompression bombs).
            self.check_pixels(img.size, what)
            img.load()
        except TooLarge:
            raise
        except UnidentifiedImageError as exc:
            raise DiffDiffError(f"{what} is not a readable image (unknown or corrupt format)") from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DiffDiffError(f"{what} is corrupt or truncated ({exc})") from exc
        if img.size[0] < 1 or img.size[1] < 1:
            raise DiffDiffError(f"{what} is empty (0 pixels)")
        return img


def png_bytes(img: Image.Image, metadata: dict[str, Any] | None = None) -> bytes:
    """Encode ``img`` as PNG with diffdiff's text chunks (the same ones the CLI writes)."""
    buf = io.BytesIO()
    meta = metadata if metadata is not None else img.info.get("diffdiff")
    img.save(buf, format="PNG", pnginfo=pnginfo_for(meta) if meta else None)
    return buf.getvalue()
