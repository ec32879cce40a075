"""The worker-pool seam: one interface, a local process pool or Ray actors behind it.

Everything that plays real-env episodes in parallel (collection, real-env CMA-ES fitness,
evaluation) asks ``make_pool`` for a pool and uses only its ``map(tasks, on_result, shared)`` /
``close()`` / context-manager API, so the backend is a setting, not a branch in every caller.

    local  ``envs.workers.WorkerPool``: spawned processes on this machine (the default).
    ray    ``envs.ray_pool.RayPool``: long-lived Ray actors, one CPU each, on this machine or a
           cluster (``ray_address="auto"`` joins the cluster ``ray start`` made).

A pool is built from ``init``, a picklable callable (a ``functools.partial`` of a module-level
function) that a worker runs once to build its env and models and that returns the function it
then applies to each task. With ``shared``, every task of that ``map`` is applied as
``run((shared, task))``; ``shared`` is sent once per worker per map (local) or put in Ray's object
store once per map (ray), not once per task: a generation's controller parameters go that way.

NPG's real envs step in lockstep, not as tasks: ``make_vector_env(backend, env_fns)`` gives a
Gymnasium vector env with next-step autoreset over picklable ``env_fns`` (the backend is a
parameter, as ``vec_env_cls`` is in Stable-Baselines3's ``make_vec_env``):

    local  ``gym.vector.SyncVectorEnv``: the envs step one after another in this process.
    ray    ``envs.ray_vector.RayVectorEnv``: one Ray actor per env, the same results for the same
           seeds and actions, and a dead or stuck actor replaced (its episode cut) as ``RayPool``
           replaces one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from envs.errors import UserError

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = ("local", "ray")
RAY_FIX = 'pip install "world-models-rl[ray]"'


class Pool(Protocol):
    """What callers may use of a pool (``WorkerPool`` and ``RayPool`` both are one)."""

    size: int

    def map(self, tasks: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            shared: Any = None) -> list[Any]:
        """Results in task order; ``on_result(index, result)`` as each arrives."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Pool: ...

    def __exit__(self, *exc) -> None: ...


def check_backend(backend: str, ray_address: str | None = None) -> None:
    """One-line UserError for an unknown backend, a missing ``ray`` or an address without ray;
    configs call it in ``check()``, before any work."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if backend == "local" and ray_address is not None:
        raise UserError("--ray-address needs --backend ray")
    if backend == "ray":
        require_ray()


def require_ray():
    """The ``ray`` module, or a one-line UserError naming the fix."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--backend ray needs Ray, which is not installed: {RAY_FIX}") from None
    return ray


def workers_share_disk(backend: str) -> bool:
    """Whether the workers can write where the driver reads: a local pool's processes can; Ray
    actors may run on other nodes, which need not share a disk with the driver."""
    return backend == "local"


def make_pool(backend: str, init: Callable[[], Callable[[Any], Any]], workers: int,
              ray_address: str | None = None, **options: Any) -> Pool:
    """A pool of ``workers`` workers that each run ``init()`` once; ``options`` go to the pool's
    constructor (e.g. ``max_task_deaths``; Ray's timeouts, see ``RayPool``)."""
    check_backend(backend, ray_address)
    if backend == "ray":
        from envs.ray_pool import RayPool

        return RayPool(init, workers, address=ray_address, **options)
    from envs.workers import WorkerPool

    return WorkerPool(init, workers, **options)


def make_vector_env(backend: str, env_fns: Sequence[Callable[[], Any]], ray_address: str | None = None,
                    **options: Any):
    """A vector env with next-step autoreset over ``env_fns`` (picklable for ray); ``options`` go
    to its constructor (``SyncVectorEnv``'s, or ``RayVectorEnv``'s ``max_deaths`` and timeouts).
    Observations (N, *obs shape), rewards (N,), terminated and truncated (N,)."""
    check_backend(backend, ray_address)
    if backend == "ray":
        from envs.ray_vector import RayVectorEnv

        return RayVectorEnv(env_fns, address=ray_address, **options)
    import gymnasium as gym

    return gym.vector.SyncVectorEnv(list(env_fns), autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP, **options)
