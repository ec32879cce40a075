"""A pool of Ray actors that never hangs when an actor dies or gets stuck.

Ray's own defaults are at-most-once (an actor is not restarted, a task not retried), and
``ray.util.ActorPool`` neither evicts a dead actor reliably nor resubmits what it held, so the
driver keeps the bookkeeping itself, as ``envs.workers.WorkerPool`` does for processes:

- every actor (``num_cpus=1``, ``num_gpus=0``, ``CUDA_VISIBLE_DEVICES=""``) runs ``init()`` once
  and then holds its env and models for the pool's life; it runs one task at a time, and the
  driver knows which task each actor holds;
- the driver waits with ``ray.wait`` and a deadline per task: ``first_timeout`` for an actor's
  first task (it includes the actor's start: a process, imports, an env, the models), then
  ``max(min_timeout, timeout_factor x the median task time so far)``;
- an actor that died (``RayActorError``: its process or node is gone) or missed its deadline is
  killed (``ray.kill``) and replaced, and its exact task (the same payload and, with ``shared``,
  the same object reference) is resubmitted; a task that has lost ``max_task_deaths`` actors is
  a ``WorkerDiedError`` instead of a loop. A task that raises an exception (the actor is alive)
  raises it here at once: it would raise again.

A retried task computes the same result, since every task is a pure function of its payload
(a seed, or controller parameters and a seed): a retry neither biases CMA-ES nor changes a dataset.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from envs.pool import require_ray
from envs.workers import WorkerDiedError

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # env vars of every actor: workers play envs on CPU only


def lost_actor_errors(ray) -> tuple[type[BaseException], ...]:
    """The exceptions of ``ray.get`` that mean the actor (its process or node) is gone."""
    exceptions = ray.exceptions
    return (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.ObjectLostError)


class _Actor:
    """A Ray actor: builds its state once with ``init()``, then applies it to tasks."""

    def __init__(self, init: Callable[[], Callable[[Any], Any]]) -> None:
        os.environ.update(NO_GPU)  # the runtime env sets it too; this covers a worker reused without it
        self.run_task = init()

    def run(self, task: Any, shared: Any = None) -> Any:
        return self.run_task(task) if shared is None else self.run_task((shared, task))

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """``workers`` Ray actors that each run ``init()`` once, then apply its result to tasks.

    Connects to Ray (``address``: ``None`` starts or reuses a local instance, ``"auto"`` joins the
    cluster of ``ray start``) unless it is already initialised; Ray stays up after ``close()``
    (the next pool of this process reuses it; Ray shuts down when the process exits)."""

    def __init__(self, init: Callable[[], Callable[[Any], Any]], workers: int, address: str | None = None,
                 max_task_deaths: int = 3, first_timeout: float = 120.0, min_timeout: float = 30.0,
                 timeout_factor: float = 10.0) -> None:
        self.ray = require_ray()
        if not self.ray.is_initialized():
            self.ray.init(address=address, include_dashboard=False, log_to_driver=True)
        self.init = init
        self.size = workers
        self.max_task_deaths = max_task_deaths
        self.first_timeout = first_timeout
        self.min_timeout = min_timeout
        self.timeout_factor = timeout_factor
        self.actor_class = self.ray.remote(num_cpus=1, num_gpus=0, max_restarts=0, max_task_retries=0,
                                           runtime_env={"env_vars": NO_GPU})(_Actor)
        self.actors: list = [self._start() for _ in range(workers)]
        self.durations: list[float] = []  # seconds of tasks that were not their actor's first

    def _start(self):
        return self.actor_class.remote(self.init)

    def timeout(self, first: bool) -> float:
        """Seconds a task may run before its actor counts as stuck."""
        if first or not self.durations:
            return self.first_timeout
        return max(self.min_timeout, self.timeout_factor * statistics.median(self.durations[-1000:]))

    def map(self, tasks: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            shared: Any = None) -> list[Any]:
        """Results in task order; ``on_result(index, result)`` is called as each arrives. With
        ``shared``, tasks run as ``run((shared, task))``; it goes into the object store once."""
        shared_ref = None if shared is None else self.ray.put(shared)
        pending = list(reversed(range(len(tasks))))
        results: dict[int, Any] = {}
        deaths: dict[int, int] = {}
        busy: dict = {}  # object ref -> (actor, task index, submitted at, actor's first task?)
        fresh = set(range(len(self.actors)))  # actors (by position) that have not finished a task
        idle = list(range(len(self.actors)))
        while len(results) < len(tasks):
            while idle and pending:
                slot, index = idle.pop(), pending.pop()
                ref = self.actors[slot].run.remote(tasks[index], shared_ref)
                busy[ref] = (slot, index, time.monotonic(), slot in fresh)
            ready, _ = self.ray.wait(list(busy), num_returns=1, timeout=self._wait_seconds(busy))
            for ref in ready:
                slot, index, started, first = busy.pop(ref)
                try:
                    result = self.ray.get(ref)
                except lost_actor_errors(self.ray) as error:
                    self._replace(slot, index, deaths, pending, f"died ({type(error).__name__})", fresh)
                else:
                    if not first:
                        self.durations.append(time.monotonic() - started)
                    fresh.discard(slot)
                    results[index] = result
                    if on_result is not None:
                        on_result(index, result)
                idle.append(slot)
            for ref, (slot, index, started, first) in list(busy.items()):
                if time.monotonic() - started > self.timeout(first):
                    del busy[ref]
                    self._replace(slot, index, deaths, pending, f"missed its {self.timeout(first):.0f}s deadline",
                                  fresh)
                    idle.append(slot)
        return [results[i] for i in range(len(tasks))]

    def _wait_seconds(self, busy: dict) -> float:
        """Until the nearest deadline (at most 5 s, at least 10 ms)."""
        now = time.monotonic()
        nearest = min(started + self.timeout(first) - now for _, _, started, first in busy.values())
        return min(5.0, max(0.01, nearest))

    def _replace(self, slot: int, index: int, deaths: dict, pending: list, what: str, fresh: set) -> None:
        """Kill the actor at ``slot``, start a new one there, and queue its task again (or give up)."""
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start()
        fresh.add(slot)
        deaths[index] = deaths.get(index, 0) + 1
        print(f"a Ray actor {what} running task {index}; starting a new one", flush=True)
        if deaths[index] >= self.max_task_deaths:
            raise WorkerDiedError(f"task {index} lost {deaths[index]} Ray actors in a row; giving up on it")
        pending.append(index)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors.clear()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
