"""Run work units on a pool of Ray actors that each load a model once; retry a unit whose actor died.

This module owns the Ray side of ``diffdiff batch`` (driven by :mod:`diffdiff.batch`, which it
never imports): connecting to a cluster or starting a local one, sizing the pool (one actor per
GPU, or ``workers`` CPU actors), loading the model in every actor once, feeding each actor units
as tasks (two in flight per actor so none waits for the driver), streaming results back to the
driver's callbacks as they finish, and replacing an actor that died (killed, crashed, its node
lost) so the unit it was running is resubmitted: the driver records a unit only when its result
has arrived, so nothing is lost and nothing is recorded twice.

``ray`` is an optional dependency (``pip install "diffdiff[ray]"``); importing this module without
it raises a one-line :class:`~diffdiff.errors.DiffDiffError` saying so.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar

import torch

from .errors import DiffDiffError

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
except ImportError as _exc:  # pragma: no cover - exercised by a test that hides ray
    raise DiffDiffError('--ray needs Ray, which is not installed: pip install "diffdiff[ray]"') from _exc

U = TypeVar("U")

#: A unit whose actor dies this many times is recorded as failed instead of retried forever.
MAX_ATTEMPTS = 3
IN_FLIGHT_PER_WORKER = 2


class _Worker:
    """One Ray actor: holds one loaded model and runs units with it."""

    def __init__(self, factory: Callable[[], Any], threads: int) -> None:
        self.factory = factory
        self.threads = threads
        self.editor: Any = None

    def setup(self) -> Optional[str]:
        """Load the model; the one-line error instead of raising (so the driver can report it)."""
        torch.set_num_threads(max(1, self.threads))
        try:
            self.editor = self.factory()
        except Exception as exc:
            if isinstance(exc, DiffDiffError):
                return str(exc)
            text = str(exc).strip().splitlines()
            return f"{type(exc).__name__}: {text[0] if text else 'unexpected failure'}"
        return None

    def pid(self) -> int:
        return os.getpid()

    def run(self, work_fn: Callable[[Any, Any], Any], unit: Any) -> Any:
        return work_fn(self.editor, unit)


def connect(address: str) -> bool:
    """Connect to ``address`` ("auto": RAY_ADDRESS, the latest local cluster, else a new local one).

    Returns True when this call started Ray (so the caller shuts it down); an already initialised
    Ray (e.g. a test's ``ray.init(num_cpus=2)``) is used as it is.
    """
    if ray.is_initialized():
        return False
    try:
        ray.init(address=None if address == "auto" else address, include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise DiffDiffError(f"cannot connect to the Ray cluster at '{address}': {text[0] if text else type(exc).__name__}") from None
    return True


def plan_workers(workers: Optional[int]) -> list[tuple[int, int]]:
    """(CPUs, GPUs) of each actor: one per GPU, or ``workers`` CPU actors sharing the CPUs."""
    res = ray.cluster_resources()
    if workers is None:
        gpus = int(res.get("GPU", 0))
        if gpus < 1:
            raise DiffDiffError("the Ray cluster has no GPUs; pass --workers N (workers=N) to run N CPU workers")
        return [(1, 1)] * gpus
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DiffDiffError(f"workers must be a positive integer, got {workers!r}")
    cpus = int(res.get("CPU", 0))
    if workers > cpus:
        raise DiffDiffError(f"--workers {workers} needs {workers} CPUs; the Ray cluster has {cpus}")
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    each = max(1, cpus // workers)
    while each > 1 and sum(c // each for c in node_cpus) < workers:
        each -= 1
    return [(each, 0)] * workers


def run_units(
    units: Sequence[U],
    *,
    factory: Callable[[], Any],
    work_fn: Callable[[Any, U], Any],
    on_done: Callable[[U, Any], None],
    on_lost: Callable[[U, str], None],
    address: str = "auto",
    workers: Optional[int] = None,
    max_attempts: int = MAX_ATTEMPTS,
    prepare: Optional[Callable[[U], Optional[str]]] = None,
) -> int:
    """Run ``work_fn(editor, unit)`` for every unit on the pool; return how many were resubmitted.

    ``on_done(unit, result)`` is called on the driver as each result arrives; ``on_lost(unit,
    error)`` for a unit that could not be run (its actor died ``max_attempts`` times, or Ray failed it).
    ``prepare(unit)`` runs on the driver just before a unit's first submission (e.g. to read its
    input files, so only the units in flight hold them); a returned error string loses the unit.
    """
    started = connect(address)
    actors: list[Any] = []
    try:
        shapes = plan_workers(workers)
        actor_cls = ray.remote(_Worker)

        def spawn(i: int) -> Any:
            cpus, gpus = shapes[i]
            return actor_cls.options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0).remote(factory, cpus)

        def check(handles: list[Any]) -> None:
            try:
                errors = ray.get([h.setup.remote() for h in handles])
            except RayActorError as exc:
                raise DiffDiffError(f"a Ray worker died while loading the model ({type(exc).__name__})") from None
            problem = next((e for e in errors if e), None)
            if problem:
                raise DiffDiffError(f"a Ray worker could not load the model: {problem}")

        actors = [spawn(i) for i in range(len(shapes))]
        check(actors)
        queue: deque[tuple[U, int]] = deque((u, 1) for u in units)
        pending: dict[Any, tuple[int, Any, U, int]] = {}  # ref -> (slot, actor, unit, attempt)

        def fill(slot: int) -> None:
            """Keep the actor busy. A retried unit runs alone: if its actor dies again, the unit is the
            cause, and a unit that kills its worker takes at most one innocent neighbour down, once."""
            mine = [att for s, a, _, att in pending.values() if s == slot and a is actors[slot]]
            if any(att > 1 for att in mine):
                return
            while queue and len(mine) < IN_FLIGHT_PER_WORKER:
                unit, attempt = queue[0]
                if attempt > 1 and mine:
                    return  # wait until this actor is idle
                queue.popleft()
                problem = prepare(unit) if prepare is not None and attempt == 1 else None
                if problem:
                    on_lost(unit, problem)
                    continue
                ref = actors[slot].run.remote(work_fn, unit)
                pending[ref] = (slot, actors[slot], unit, attempt)
                mine.append(attempt)
                if attempt > 1:
                    return

        def fill_all() -> None:
            for slot in range(len(actors)):
                fill(slot)

        fill_all()
        retried = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            slot, actor, unit, attempt = pending.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, WorkerCrashedError):
                if actors[slot] is actor:  # first news of this actor's death: replace it
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    actors[slot] = spawn(slot)
                    check([actors[slot]])
                if attempt >= max_attempts:
                    on_lost(unit, f"a Ray worker died {attempt} times running this row")
                else:
                    queue.appendleft((unit, attempt + 1))
                    retried += 1
                fill_all()
                continue
            except RayTaskError as exc:
                text = str(exc.cause if getattr(exc, "cause", None) else exc).strip().splitlines()
                on_lost(unit, f"the Ray task failed: {text[-1] if text else type(exc).__name__}")
                fill_all()
                continue
            on_done(unit, result)
            fill_all()
        for unit, _ in queue:  # cannot happen (an idle actor always takes the next unit); never drop one silently
            on_lost(unit, "not run: no Ray worker took it")
        return retried
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if started:
            ray.shutdown()

