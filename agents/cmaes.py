"""CMA-ES for the controller C (World Models, Ha & Schmidhuber 2018), resumable bit for bit.

One generation: ask pycma for ``population`` parameter vectors, score them all with one call
``fitness(params [P, n_params] float32, seed) -> scores [P]`` (each score is the mean over
``rollouts`` episodes; the rollout count lives in the fitness closure), tell pycma the scores
(negated when maximising: pycma minimises). Every ``eval_every`` generations and at the last
one, the generation's best member (and the CMA mean) is re-scored over ``eval_rollouts``
episodes on a separate seed stream; the best re-scored controller ever seen is written to
``run_dir/controller.safetensors`` + ``controller.json``.

Resume without pickle: after every generation the whole numeric state of the search
(mean, sigma, covariance C with its eigenbasis B, D, evolution paths, step-size state,
counters, best-so-far, fitness history) and the sampler's random-generator state go to
``run_dir/cmaes_state.safetensors`` (arrays) + ``cmaes_state.json`` (scalars). A trainer
built on a run dir that holds a state continues from it, and draws exactly the candidates
the uninterrupted run would have drawn.

Random numbers: pycma draws every normal sample through its ``randn`` option (default
``np.random.randn``, numpy's *global* generator, seeded by ``np.random.seed(opts['seed'])``).
We hand it a private ``numpy.random.Generator`` instead: rollouts that touch ``np.random``
cannot perturb the search, and the state to save is exactly that generator's.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cma
import numpy as np
import torch
from cma.utilities.utils import ElapsedWCTime

from agents.controller import Controller, ControllerSpec
from envs.errors import ConfigMismatchError, CorruptFileError
from world_models.checkpoint import check_config, load_checkpoint, load_module_state, module_state, save_checkpoint

Fitness = Callable[[torch.Tensor, int], torch.Tensor]
"""``fitness(params [P, n_params] float32, seed) -> scores [P]``: mean return per member.

Every row must get its own rollouts (so several copies of one vector give independent
estimates), and the same ``(params, seed)`` must give the same scores.
"""

CONTROLLER_NAME = "controller"
STATE_NAME = "cmaes_state"
STATE_FORMAT = 1
TRAIN_SEED_STRIDE = 100_003  # generations per config.seed before two seed streams could meet
EVAL_SEED_OFFSET = 1_000_000_007  # re-evaluation rollouts never reuse a training seed

# Settings that shape the search: a state file written with other values cannot continue.
# `generations` is left out on purpose, so that a finished run can be extended.
_RESUME_KEYS = ("population", "rollouts", "sigma0", "eval_every", "eval_rollouts", "seed", "maximise", "eval_mean")


@dataclass
class CMAESConfig:
    """CMA-ES settings (paper: population 64, mean of 16 rollouts, sigma0 0.1).

    Attributes:
        population: candidates per generation (pycma's ``popsize``).
        rollouts: rollouts per candidate, i.e. what the fitness closure averages over.
        sigma0: initial step size.
        generations: length of the run; the last generation is always re-evaluated.
        eval_every: re-evaluate the current best every K generations.
        eval_rollouts: rollouts per re-evaluated candidate.
        seed: seeds the sampler and every rollout seed.
        maximise: the fitness is a score to maximise (False: a loss to minimise).
        eval_mean: also re-evaluate the CMA mean (often better than any single sample).
    """

    population: int = 64
    rollouts: int = 16
    sigma0: float = 0.1
    generations: int = 100
    eval_every: int = 25
    eval_rollouts: int = 64
    seed: int = 0
    maximise: bool = True
    eval_mean: bool = True

    def __post_init__(self) -> None:
        if self.population < 4:
            raise ValueError(f"population must be at least 4 (pycma needs mu >= 2), got {self.population}")
        if min(self.rollouts, self.generations, self.eval_every, self.eval_rollouts) < 1:
            raise ValueError(f"rollouts, generations, eval_every and eval_rollouts must be >= 1: {self}")
        if self.sigma0 <= 0 or self.seed < 0:
            raise ValueError(f"sigma0 must be > 0 and seed >= 0: {self}")


class _Normal:
    """``randn(*shape)`` for pycma, backed by a private generator whose state we can save."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


# --- pycma state <-> (tensors, JSON) --------------------------------------------------------

# The objects inside a CMAEvolutionStrategy that carry state from one generation to the next
# (paths relative to the strategy; "" is the strategy itself). Everything else (options,
# parameters, geno-pheno map, loggers) is rebuilt identically by the constructor.
_COMPONENTS = ("", "sm", "adapt_sigma", "adapt_sigma.sp", "sigma_vec", "fit", "best", "best.last",
               "_stoptolxstagnation")
# Aliases of the sampler's arrays: restored by re-pointing them (`_updateBDfromSM`), not copied.
_ALIASES = {"": {"B", "C", "D"}}
_SCALARS = (bool, int, float, str, type(None))


def _component(es: cma.CMAEvolutionStrategy, path: str) -> Any:
    obj = es
    for name in filter(None, path.split(".")):
        obj = getattr(obj, name, None)
    return obj


def _is_plain(value: Any) -> bool:
    return isinstance(value, _SCALARS + (np.bool_, np.integer, np.floating))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> dict | None:
    """JSON description of one attribute (arrays go to ``tensors``); None: not state data."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "bif":
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"array": key}
    if isinstance(value, np.generic) and _is_plain(value):
        # Keep numpy scalar types (sigma is np.float64): same arithmetic, same types as before.
        return {"scalar": value.item(), "dtype": value.dtype.name}
    if isinstance(value, _SCALARS):
        return {"value": value}
    # Exact types: list/dict subclasses (pycma's MoreToWrite, CMAOptions) are objects, not data.
    if type(value) in (list, tuple) and all(_is_plain(v) for v in value):
        return {"list": [_plain(v) for v in value], "tuple": type(value) is tuple}
    if type(value) is list and all(isinstance(v, np.ndarray) and v.dtype.kind in "bif" for v in value):
        # e.g. TPA's mean-shift directions waiting to be injected into the next ask
        for i, v in enumerate(value):
            tensors[f"{key}.{i}"] = torch.from_numpy(np.ascontiguousarray(v)).clone()
        return {"arrays": len(value)}
    if type(value) is dict and all(isinstance(k, str) and _is_plain(v) for k, v in value.items()):
        return {"dict": {k: _plain(v) for k, v in value.items()}}
    return None  # objects and callables: rebuilt by the constructor


def _decode(spec: dict, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if "array" in spec:
        return tensors[spec["array"]].numpy().copy()
    if "scalar" in spec:
        return np.dtype(spec["dtype"]).type(spec["scalar"])
    if "value" in spec:
        return spec["value"]
    if "list" in spec:
        return tuple(spec["list"]) if spec["tuple"] else list(spec["list"])
    if "arrays" in spec:
        return [tensors[f"{key}.{i}"].numpy().copy() for i in range(spec["arrays"])]
    return dict(spec["dict"])


def es_state(es: cma.CMAEvolutionStrategy) -> tuple[dict[str, torch.Tensor], dict]:
    """All numeric state of ``es`` as (tensors, JSON-able description)."""
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, dict] = {}
    for path in _COMPONENTS:
        obj = _component(es, path)
        if obj is None:
            continue
        skip = _ALIASES.get(path, set())
        attrs = {}
        for name, value in vars(obj).items():
            if name not in skip and (encoded := _encode(value, f"es.{path}.{name}", tensors)) is not None:
                attrs[name] = encoded
        described[path] = attrs
    return tensors, described


def restore_es_state(es: cma.CMAEvolutionStrategy, tensors: dict[str, torch.Tensor], described: dict) -> None:
    """Inverse of :func:`es_state` on a freshly constructed strategy with the same options."""
    for path, attrs in described.items():
        obj = _component(es, path)
        if obj is None:
            raise CorruptFileError(f"CMA-ES state has a component {path!r} this pycma strategy lacks")
        for name, encoded in attrs.items():
            setattr(obj, name, _decode(encoded, f"es.{path}.{name}", tensors))
    es._updateBDfromSM(es.sm)  # re-point es.B/C/D at the restored sampler arrays
    if not hasattr(es, "timer"):
        es.timer = ElapsedWCTime()  # ask() creates it only at iteration 0


# --- the trainer ------------------------------------------------------------------------------


class CMAESTrainer:
    """CMA-ES over controller parameter vectors, checkpointed after every generation.

    If ``run_dir`` already holds a CMA-ES state, the trainer continues from it (``x0`` is then
    ignored) and ``resumed`` is True. The state must come from the same ``spec`` and the same
    search settings (see ``_RESUME_KEYS``), else :class:`ConfigMismatchError`.
    """

    def __init__(self, spec: ControllerSpec, config: CMAESConfig, run_dir: Path, x0: torch.Tensor | None = None,
                 ) -> None:
        self.spec = spec
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict] = []
        self.best: dict | None = None  # best re-evaluated controller: fitness, generation, source
        self._normal = _Normal(config.seed)
        self.es = self._new_es(x0)
        self.resumed = (self.run_dir / f"{STATE_NAME}.json").exists()
        if self.resumed:
            self._load_state()

    def _new_es(self, x0: torch.Tensor | None) -> cma.CMAEvolutionStrategy:
        n = self.spec.num_params
        start = np.zeros(n) if x0 is None else torch.as_tensor(x0, dtype=torch.float64).numpy().copy()
        if start.shape != (n,):
            raise ValueError(f"x0 must have shape ({n},), got {tuple(start.shape)}")
        options = {
            "popsize": self.config.population,
            "randn": self._normal,
            "seed": math.nan,  # pycma must not reseed numpy's global RNG: it does not sample from it
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,  # no outcmaes/ files
        }
        return cma.CMAEvolutionStrategy(start, self.config.sigma0, options)

    # -- read-only views ----------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Generations completed so far."""
        return int(self.es.countiter)

    @property
    def mean(self) -> np.ndarray:
        """Copy of the search distribution's mean (float64)."""
        return np.array(self.es.mean, copy=True)

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    def train_seed(self, generation: int) -> int:
        """Seed for the rollouts that rank generation ``generation`` (1-based)."""
        return self.config.seed * TRAIN_SEED_STRIDE + generation

    def eval_seed(self, generation: int) -> int:
        """Seed for the re-evaluation rollouts after generation ``generation``."""
        return EVAL_SEED_OFFSET + self.train_seed(generation)

    def is_eval_generation(self, generation: int) -> bool:
        """Re-evaluation schedule: a function of the generation only, so split runs match whole ones."""
        return generation % self.config.eval_every == 0 or generation == self.config.generations

    # -- training -----------------------------------------------------------------------------

    def train(self, fitness: Fitness, eval_fitness: Fitness | None = None,
              log: Callable[[dict], None] | None = None, generations: int | None = None) -> dict:
        """Run until ``generations`` generations in total are done (default ``config.generations``).

        Args:
            fitness: scores a population; averages ``config.rollouts`` rollouts per member.
            eval_fitness: scores candidates for re-evaluation, averaging ``config.eval_rollouts``
                rollouts itself. If None, ``fitness`` is called on enough copies of each
                candidate to reach ``eval_rollouts`` rollouts, and the copies are averaged.
            log: called with each generation's record (see :meth:`step`).
            generations: stop after this many generations in total, e.g. to split a run;
                the re-evaluation schedule still follows ``config.generations``.

        Returns:
            ``generation``, ``sigma``, ``evaluations`` and the best re-evaluated controller's
            ``best_fitness``, ``best_generation``, ``best_source`` (None before any re-evaluation).
        """
        target = self.config.generations if generations is None else generations
        while self.generation < target:
            record = self.step(fitness, eval_fitness)
            if log is not None:
                log(record)
        best = self.best or {}
        return {"generation": self.generation, "sigma": self.sigma, "evaluations": int(self.es.countevals),
                "best_fitness": best.get("fitness"), "best_generation": best.get("generation"),
                "best_source": best.get("source")}

    def step(self, fitness: Fitness, eval_fitness: Fitness | None = None) -> dict:
        """One generation (ask, score, tell, maybe re-evaluate, save); returns its log record.

        The record has ``generation``, ``best``, ``mean``, ``worst`` (population scores, in the
        fitness's own sense), ``sigma`` (after the update), ``evaluations``, ``seconds``, and on
        re-evaluation generations ``eval_best`` / ``eval_mean`` and ``best_ever``.
        """
        start = time.perf_counter()
        generation = self.generation + 1
        solutions = self.es.ask()
        params = torch.as_tensor(np.asarray(solutions), dtype=torch.float32)
        scores = self._checked_scores(fitness(params, self.train_seed(generation)), len(solutions))
        utility = scores if self.config.maximise else -scores  # larger is better from here on
        utility = torch.nan_to_num(utility, nan=-math.inf)  # a failed rollout ranks last
        self.es.tell(solutions, (-utility).tolist())
        best, worst = int(utility.argmax()), int(utility.argmin())
        record = {"generation": generation, "best": float(scores[best]), "mean": float(scores.mean()),
                  "worst": float(scores[worst]), "sigma": self.sigma, "evaluations": int(self.es.countevals)}
        if self.is_eval_generation(generation):
            record.update(self._reevaluate(generation, params[best], eval_fitness or fitness, eval_fitness is None))
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self._save_state()
        return record

    def _checked_scores(self, scores: torch.Tensor, size: int) -> torch.Tensor:
        scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
        if scores.shape != (size,):
            raise ValueError(f"fitness returned {tuple(scores.shape)} scores for {size} candidates")
        return scores

    def _reevaluate(self, generation: int, best_member: torch.Tensor, evaluate: Fitness, tile: bool) -> dict:
        """Re-score the generation's best (and the mean); save a new best-ever controller."""
        candidates = {"best": best_member}
        if self.config.eval_mean:
            candidates["mean"] = torch.as_tensor(self.es.mean, dtype=torch.float32)
        params = torch.stack(list(candidates.values()))
        # Without a dedicated eval_fitness, reach eval_rollouts by scoring copies in one batch.
        copies = math.ceil(self.config.eval_rollouts / self.config.rollouts) if tile else 1
        raw = evaluate(params.repeat(copies, 1), self.eval_seed(generation))
        scores = self._checked_scores(raw, copies * len(params)).view(copies, len(params)).mean(dim=0)
        record = {}
        for (source, vector), score in zip(candidates.items(), scores.tolist(), strict=True):
            record[f"eval_{source}"] = score
            if self._improves(score):
                self.best = {"fitness": score, "generation": generation, "source": source}
                self._save_controller(vector)
        record["best_ever"] = None if self.best is None else self.best["fitness"]
        return record

    def _improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best is None:
            return True
        return score > self.best["fitness"] if self.config.maximise else score < self.best["fitness"]

    def _save_controller(self, vector: torch.Tensor) -> None:
        controller = Controller(self.spec).load_vector(vector)
        info = {"spec": self.spec.to_dict(), "algorithm": "cmaes", "eval_rollouts": self.config.eval_rollouts,
                **self.best}
        save_checkpoint(self.run_dir, module_state(controller), info, name=CONTROLLER_NAME)

    # -- state file ---------------------------------------------------------------------------

    def _save_state(self) -> None:
        tensors, described = es_state(self.es)
        # Also in the JSON: a pair torn by a crash between the two writes is detected on load.
        tensors["generation"] = torch.tensor(self.generation)
        state = {"format": STATE_FORMAT, "spec": self.spec.to_dict(), "n_params": self.spec.num_params,
                 "config": asdict(self.config), "generation": self.generation, "pycma_version": cma.__version__,
                 "rng": self._normal.rng.bit_generator.state, "es": described, "best": self.best,
                 "history": self.history}
        save_checkpoint(self.run_dir, tensors, state, name=STATE_NAME)

    def _load_state(self) -> None:
        tensors, state = load_checkpoint(self.run_dir, name=STATE_NAME)
        where = self.run_dir / f"{STATE_NAME}.json"
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CorruptFileError(f"{where} is not a CMA-ES state (format {STATE_FORMAT})")
        if state.get("n_params") != self.spec.num_params or state.get("spec") != self.spec.to_dict():
            raise ConfigMismatchError(
                f"{where} was made for a controller with {state.get('n_params')} parameters "
                f"({state.get('spec')}), not {self.spec.num_params}: use a new run dir or the same controller")
        config = {key: value for key, value in asdict(self.config).items() if key in _RESUME_KEYS}
        check_config(state.get("config", {}), config, f"the CMA-ES state in {self.run_dir}")
        if state.get("pycma_version") != cma.__version__:
            warnings.warn(f"{where} was written by pycma {state.get('pycma_version')}, this is {cma.__version__}: "
                          "the resumed run may not match an uninterrupted one exactly", stacklevel=3)
        try:
            if int(tensors["generation"]) != state["generation"]:
                raise CorruptFileError(f"{where} and its .safetensors are from different generations "
                                       "(interrupted while saving): start a new run dir")
            restore_es_state(self.es, tensors, state["es"])
            self._normal.rng.bit_generator.state = state["rng"]
            self.best, self.history = state["best"], list(state["history"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CorruptFileError(f"corrupt CMA-ES state {where}: {type(error).__name__} {error}") from None
        if self.generation != state["generation"]:
            raise CorruptFileError(f"corrupt CMA-ES state {where}: restored generation {self.generation}")


def load_controller(run_dir: Path, device: str | torch.device = "cpu") -> tuple[Controller, dict]:
    """The best re-evaluated controller of a CMA-ES run, and its info (spec, fitness, generation, ...)."""
    tensors, info = load_checkpoint(Path(run_dir), name=CONTROLLER_NAME, device=device)
    try:
        controller = Controller(ControllerSpec.from_dict(info["spec"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptFileError(f"bad controller info in {Path(run_dir) / CONTROLLER_NAME}.json: {error}") from None
    load_module_state(controller, tensors)
    return controller.to(device).eval(), info
