"""Shared benchmark harness: environment set-up, interleaved timings, the plain-img2img baseline,
the machine line, the network-call counter and our own code's share of an edit (``own_code_ms``).
``run.py``, ``bench_fan.py``, ``big_images.py``, ``bench_video.py`` and ``bench_addons.py`` import it
(and not each other).

Importing it sets the offline hub, passive OpenMP waiting and quiet warnings, before torch loads.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads spin while waiting by default; on a shared machine (more runnable threads than
# cores) that made a 0.2 s edit take 2-15 s here. Passive waiting keeps timings stable. It must be
# set before torch loads OpenMP, hence here; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
PROMPT = "a watercolour fox"


def timings(fns: list[Callable[[], Any]], reps: int, warmup: bool = True) -> list[list[float]]:
    """Seconds per call of each function, interleaved: every repetition runs all of them, in an
    order rotated each time (A B C, B C A, ...) so no side always goes first."""
    if warmup:
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(reps):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def side_by_side(a: Callable[[], Any], b: Callable[[], Any], reps: int, warmup: bool = True) -> tuple[float, float, float]:
    """Median seconds of ``a`` and ``b`` and the median per-pair ratio a/b (interleaved, warmed up)."""
    ta, tb = timings([a, b], reps, warmup)
    ratio = statistics.median(x / y for x, y in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), ratio


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the spread of per-pair ratios: how noisy the machine was)."""
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def plain_img2img(ed: Any, img: Any, steps: int, width: int, height: int) -> Callable[[], Any]:
    """The baseline: the editor's own pipeline called as plain diffusers img2img (same seed, steps, size).

    For the own-noise family (text-to-image pipelines) it is the pipeline's text-to-image call plus
    the one VAE encode of the image that an img2img call would make: the same network calls.
    """
    import torch

    codec = getattr(ed.adapter, "codec", None)  # the own-noise family drives a text-to-image call

    def plain() -> Any:
        gen = torch.Generator().manual_seed(3)
        from diffdiff.request import EditRequest

        kw = ed.adapter.call_kwargs(img, EditRequest(PROMPT, num_inference_steps=steps), gen, (width, height))
        with torch.inference_mode():
            if codec is not None:  # plus the one VAE encode of the image an img2img call makes
                codec.encode(img, gen, ed.pipe.device, codec.vae.dtype)
            return ed.pipe(**kw, output_type="pil").images

    return plain


def secs(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def threads(n: Optional[int] = None) -> None:
    import torch

    n = n or int(os.environ.get("DIFFDIFF_BENCH_THREADS", "0")) or max(1, min(2, os.cpu_count() or 1))
    os.environ["DIFFDIFF_BENCH_THREADS"] = str(n)  # memory subprocesses use the same count
    torch.set_num_threads(n)


def quiet() -> None:
    from diffdiff.cli.common import quiet_third_party

    quiet_third_party(True)
    warnings.filterwarnings("ignore")


def network_calls(pipes: list[Any], fn: Callable[[], Any], keys: Optional[tuple[str, ...]] = None) -> dict[str, int]:
    """How often ``fn`` runs each network of ``pipes`` (denoiser, VAE encoder/decoder halves, text
    encoders, ...): forward hooks on the components (only ``keys`` when given)."""
    import torch

    counts: dict[str, int] = {}
    handles = []
    for p in pipes:
        if p is None:
            continue
        for key, module in p.components.items():
            if not isinstance(module, torch.nn.Module) or (keys is not None and key not in keys):
                continue
            parts = {key: module}
            for half in ("encoder", "decoder"):  # VAE encode and decode are separate calls
                if isinstance(getattr(module, half, None), torch.nn.Module):
                    parts[f"{key}.{half}"] = getattr(module, half)
            for name, part in parts.items():
                def count(*_: Any, name: str = name) -> None:
                    counts[name] = counts.get(name, 0) + 1
                handles.append(part.register_forward_hook(count))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return counts


def machine(threads: Optional[int] = None) -> str:
    """CPU, cores, threads, GPU, versions and load: what a timing table needs to be read."""
    import diffusers
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"{cpu}; {os.cpu_count()} cores, torch threads {threads or torch.get_num_threads()}; GPU: {gpu}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}; "
            f"load average at the end {load}")


def own_code_ms(ed: Any, edit: Callable[[], Any], n: int) -> float:
    """Milliseconds per edit spent in diffdiff's own code: the edit outside every pipeline call, plus
    our step hook inside them. Pipeline classes' ``__call__`` and the hook are timed for ``n`` edits."""
    import functools

    from diffdiff import hook as hook_module

    spent = {"pipelines": 0.0, "hook": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        @functools.wraps(fn)  # keeps the signature diffdiff reads from pipelines
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    classes = {type(p) for p in ed.adapter.pipelines() if p is not None}
    saved = {cls: cls.__dict__.get("__call__") for cls in classes}
    # The own-noise family encodes the image itself: that VAE call is the model's work, not ours.
    from diffdiff.layouts import LatentCodec

    encode = LatentCodec.encode
    # The blend (DifferentialStep.step, reached from the callback or from the own-noise seam's
    # scheduler.step wrapper) and the seam's schedule cut + noising run inside pipeline calls: ours.
    from diffdiff.ownnoise import ScheduleSeam

    hook_call = hook_module.DifferentialStep.step
    seam_parts = {name: getattr(ScheduleSeam, name) for name in ("_set_timesteps", "_check_start")}
    try:
        for cls in classes:
            cls.__call__ = timed(cls.__call__, "pipelines")
        hook_module.DifferentialStep.step = timed(hook_call, "hook")  # type: ignore[method-assign]
        for name, fn in seam_parts.items():
            setattr(ScheduleSeam, name, timed(fn, "hook"))
        LatentCodec.encode = timed(encode, "pipelines")  # type: ignore[method-assign]
        t0 = time.perf_counter()
        for _ in range(n):
            edit()
        total = time.perf_counter() - t0
    finally:
        hook_module.DifferentialStep.step = hook_call  # type: ignore[method-assign]
        for name, fn in seam_parts.items():
            setattr(ScheduleSeam, name, fn)
        LatentCodec.encode = encode  # type: ignore[method-assign]
        for cls, call in saved.items():
            if call is None:
                del cls.__call__
            else:
                cls.__call__ = call
    return (total - spent["pipelines"] + spent["hook"]) / n * 1000


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the ``heading`` section of the results file ``path`` (up to the next ``## `` heading) with
    ``text``, or append it; the file is replaced atomically. For scripts that own one section."""
    old = path.read_text() if path.exists() else "# diffdiff benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text.rstrip("\n") + "\n\n", old, count=1).rstrip("\n") + "\n"
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
