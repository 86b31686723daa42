"""Shared CLI plumbing: quiet third-party logs, one-line errors, model loading, saving outputs.

Every command body runs inside :func:`run_command`, which turns our :class:`DiffDiffError` (and
the few foreign errors users can cause) into ``error: <one line>`` with exit code 1, Ctrl-C into
exit 130, and shows our :class:`DiffDiffWarning` as ``warning: <one line>``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import DiffDiffError, DiffDiffWarning

_state: dict[str, Any] = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = verbose
    quiet_third_party(not verbose)


def is_verbose() -> bool:
    return bool(_state["verbose"])


def quiet_third_party(quiet: bool = True) -> None:
    """Hide diffusers/transformers/hub chatter and their loading bars unless --verbose."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = logging.ERROR if quiet else logging.INFO
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "torch", "PIL", "httpx"):
        logging.getLogger(name).setLevel(level)
    try:
        import diffusers.utils.logging as dlog

        dlog.set_verbosity(level)
        if quiet:
            dlog.disable_progress_bar()
        else:
            dlog.enable_progress_bar()
    except Exception:  # pragma: no cover - diffusers missing is reported elsewhere
        pass
    try:
        import transformers.utils.logging as tlog

        tlog.set_verbosity(level)
        if quiet:
            tlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    if quiet:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|torch|huggingface_hub).*")


def err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def info(message: str) -> None:
    typer.echo(message, err=True)


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, DiffDiffWarning):
        typer.echo(f"warning: {message}", err=True)
    elif is_verbose():
        typer.echo(f"warning ({category.__name__}): {message}", err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Map errors to one line and an exit code; never a traceback unless --verbose."""
    old_show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    except DiffDiffError as exc:
        err(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err("interrupted; no output was written")
        raise typer.Exit(130) from None
    except MemoryError:
        err("out of memory; try a smaller image, --crop, or fewer images")
        raise typer.Exit(1) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if is_verbose():
            raise
        text = str(exc).strip().splitlines()
        err(f"{type(exc).__name__}: {text[0] if text else 'unexpected failure'} (run with --verbose for details)")
        raise typer.Exit(1) from None
    finally:
        warnings.showwarning = old_show


def run_command(body: Callable[[], None]) -> None:
    with user_errors():
        body()


_editor_cache: dict[tuple[Any, ...], Any] = {}


def load_editor(
    model: Optional[str],
    refiner: Optional[str] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    **kw: Any,
) -> Any:
    """Load an :class:`~diffdiff.Editor`, reporting what is being loaded."""
    from ..editor import Editor
    from ..loading import DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    key = (model, refiner, device, dtype, tuple(sorted(kw.items())))
    if key in _editor_cache:
        return _editor_cache[key]
    info(f"loading {model}" + (f" + refiner {refiner}" if refiner else ""))
    ed = Editor.from_pretrained(model, refiner=refiner, device=device, torch_dtype=dtype, progress=sys.stderr.isatty(), **kw)
    _editor_cache[key] = ed
    return ed


def save_outputs(images: list[Any], output: Path) -> list[Path]:
    """Write images atomically with their metadata; ``out-1.png`` ... for several."""
    from ..io import numbered_paths, save_png_atomic

    paths = numbered_paths(output, len(images))
    for img, path in zip(images, paths):
        save_png_atomic(img, path, img.info.get("diffdiff"))
        info(f"wrote {path}")
    return paths
