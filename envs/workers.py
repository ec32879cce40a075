"""A pool of worker processes that never hangs when a worker dies.

Each worker is a spawned process that builds its own state once (``init()`` returns the
function it then applies to tasks: an env and models live for the pool's life) and talks
to the parent over a private pipe, one message per task each way. The parent knows which
task every worker holds, so when a worker dies its task goes back into the queue and a
fresh worker takes its place; a task that kills ``max_task_deaths`` workers is an error
instead of a loop. Workers never see a GPU (``CUDA_VISIBLE_DEVICES`` is emptied before ``init``
runs): they play envs on CPU, and the one process that trains on the GPU keeps it to itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

TaskFn = Callable[[Any], Any]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCHED: list[int] = []  # a worker's end of its watcher's pipe


class WorkerDiedError(RuntimeError):
    """A task kept killing the workers that ran it."""


def _serve(init: Callable[[], TaskFn], connection) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before init imports or builds anything that could touch CUDA
    _die_with_parent()
    _reap_group_on_exit()
    run = init()
    shared = None
    try:
        while (message := connection.recv()) is not None:
            index, task, update = message
            if update is not None:  # the first task of a map on this worker carries the map's shared value
                shared = update[0]
            connection.send((index, run(task) if shared is None else run((shared, task))))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent went away (a reset or broken pipe is an OSError): an orphan must not linger


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies, even by SIGKILL
    (a worker in the middle of an episode would otherwise play on until its next message)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the pipe's EOF still ends the worker after its current task
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _reap_group_on_exit() -> None:
    """Make this worker a process group of its own, with a watcher process that kills the whole
    group once the worker is gone, however it ended (SIGKILL included). An env's engine started
    by the worker (ViZDoom runs the game as a child process that ignores SIGTERM) is in the
    group, so it dies with its worker instead of running on as an orphan."""
    if not hasattr(os, "fork"):
        return
    os.setpgid(0, 0)
    read_end, write_end = os.pipe()  # close-on-exec: an engine that execs never holds it
    if os.fork() == 0:  # the watcher: block until the worker's end of the pipe closes
        os.closerange(3, read_end)  # hold nothing of the worker's (its pipe to the parent above all)
        os.closerange(read_end + 1, 65536)
        while os.read(read_end, 1):
            pass
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the worker's engines, and this watcher last
        os._exit(0)
    os.close(read_end)
    _WATCHED.append(write_end)  # held open for the worker's whole life


class WorkerPool:
    """``workers`` processes that each run ``init()`` once, then apply its result to tasks."""

    def __init__(self, init: Callable[[], TaskFn], workers: int, max_task_deaths: int = 3) -> None:
        self.init = init
        self.size = workers
        self.max_task_deaths = max_task_deaths
        self.context = mp.get_context("spawn")  # emulators and forked state do not mix
        self.workers: dict = {}  # parent end of pipe -> [process, task index in flight or None, map id seen]
        self._map_id = 0  # which map's shared value each worker holds
        self._shared = None
        for _ in range(workers):
            self._start_worker()

    def _start_worker(self) -> None:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(self.init, child_end), daemon=True)
        process.start()
        child_end.close()
        self.workers[parent_end] = [process, None, None]

    def map(self, tasks: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            shared: Any = None) -> list[Any]:
        """Results in task order; ``on_result(index, result)`` is called as each arrives. With
        ``shared``, tasks run as ``run((shared, task))``; it is sent once per worker, not per task."""
        self._map_id += 1
        self._shared = shared
        pending = list(reversed(range(len(tasks))))
        results: dict[int, Any] = {}
        deaths: dict[int, int] = {}
        for connection in list(self.workers):
            self._hand_out(connection, tasks, pending, deaths)
        while len(results) < len(tasks):
            for connection in multiprocessing.connection.wait(list(self.workers), timeout=5.0):
                try:
                    index, result = connection.recv()
                except (EOFError, ConnectionResetError, OSError):
                    self._replace(connection, tasks, pending, deaths)
                    continue
                results[index] = result
                self.workers[connection][1] = None
                if on_result is not None:
                    on_result(index, result)
                self._hand_out(connection, tasks, pending, deaths)
        return [results[i] for i in range(len(tasks))]

    def _hand_out(self, connection, tasks, pending, deaths) -> None:
        if not pending:
            return
        index = pending.pop()
        record = self.workers[connection]
        update = None if record[2] == self._map_id else (self._shared,)
        try:
            connection.send((index, tasks[index], update))
        except OSError:  # the worker died between tasks: the task never reached it
            pending.append(index)
            self._replace(connection, tasks, pending, deaths)
            return
        record[1], record[2] = index, self._map_id

    def _replace(self, connection, tasks, pending, deaths) -> None:
        process, index, _ = self.workers.pop(connection)
        process.join(timeout=5)
        print(f"a worker died (exit code {process.exitcode}) running task {index}; starting a new one")
        self._start_worker()
        if index is not None:
            deaths[index] = deaths.get(index, 0) + 1
            if deaths[index] >= self.max_task_deaths:
                raise WorkerDiedError(f"task {index} killed {deaths[index]} workers in a row; giving up on it")
            pending.append(index)
        new_connection = next(reversed(self.workers))
        self._hand_out(new_connection, tasks, pending, deaths)

    def close(self) -> None:
        for connection in self.workers:
            try:
                connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process, _, _ in self.workers.values():
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        self.workers.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
