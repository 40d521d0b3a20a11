"""Sweep files (`sweeps/*.yaml`): parsed and validated before Ray or MLflow are touched.

    name: k_ablation                  # default: the file's stem
    base: ../configs/voc.yaml         # run config: a path (relative to this file) or a mapping
    overrides: {train.epochs: 20}     # dotted keys applied on top of the base
    space:                            # dotted config keys → search domain
      loss.k_sap_neg: [5, 10, 15, 20]           # a list is a choice
      loss.lambda_cam: {loguniform: [0.01, 1]}  # also uniform: [lo, hi], int: [lo, hi]
    search: {algorithm: grid, seed: 0, num_trials: null}   # grid | tpe | random
    scheduler: {type: none}           # or asha (metric, mode, grace_period, reduction_factor)
    metric: seed_miou                 # or mask_miou, ... when `stages` reaches that stage
    mode: max
    repeats: 1                        # grid only: every point with this many training seeds
                                      # (train.seed = base seed + 0..repeats-1), averaged in
                                      # `launch.py report` as mean ± std
    stages: [seeds]                   # what each trial runs after training; [seeds, masks]
                                      # adds ir_labels, irn and masks (mask_miou per trial)
    resources: {cpu: 1, gpu: 0}       # per trial; fractions allowed
    max_concurrent: 1
    max_failures: 1                   # retries of a crashed trial, from its last checkpoint
    storage: ray_results              # Ray's storage: a path every node sees, or s3://...
    optuna_storage: null              # the Optuna study's database URL; default
                                      # $COBRA_OPTUNA_STORAGE, else optuna.db (SQLite) beside
                                      # the default MLflow store (`cobra.study`)
    mlflow: {experiment: cobra}       # a non-empty name

Every mistake is a ConfigError naming the key, with a close match when there is one."""

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobra import config as config_mod
from cobra import models, naming
from cobra.config import REPLICATE_KEY, knob, suggest
from cobra.errors import ConfigError
from cobra.objective import projections_never_start
from cobra.stages import METRICS as STAGE_METRICS_OF
from cobra.stages import POST_TRAIN_STAGES, train

DOMAIN_KINDS = ("choice", "int", "uniform", "loguniform")
# The metrics a trial reports once per epoch (what an early-stopping scheduler can act on).
EPOCH_METRICS = train.EPOCH_METRICS
# What every finished trial reports: training's metrics and the seed stage's headline; a sweep
# can rank only on these and on those of the `stages` it adds (each stage declares its own).
TRIAL_METRICS = (*STAGE_METRICS_OF["train"], *STAGE_METRICS_OF["seeds"])
# Stages a trial may run after training, in pipeline order, and the headline metrics each
# adds to a trial's report.
TRIAL_STAGES = POST_TRAIN_STAGES
STAGE_METRICS = {name: STAGE_METRICS_OF[name] for name in TRIAL_STAGES if name != "seeds"}
MAX_REPEATS = 100
# Config keys (prefixes) that change where or how a run goes, not what it measures.
NOT_MEASURED = ("run.", "train.progress", "train.device", "data.num_workers",
                "data.decoded_cache", "masks.workers", "seeds.batch_images")
# A sweep's name is a directory under `storage` and an MLflow run name: no way out of storage.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ----------------------------------------------------------------------------------------------
# The file as written, declared as the run config is (`cobra.config.knob`) and read by the same
# engine (`cobra.config.build`): types, choices, bounds and unknown keys, each refused naming
# its key. The keys whose meaning needs more (base, overrides, space, stages, metric) are
# checked in `load_sweep`.


@dataclass
class SearchSection:
    algorithm: str = knob("tpe", choices=("tpe", "grid", "random"))
    seed: int = knob(0, ge=0, le=config_mod.SEED_MAX)
    num_trials: int | None = knob(None, ge=1, help="None: a grid's size, else 8")


@dataclass
class SchedulerSection:
    type: str = knob("none", choices=("none", "asha"))
    metric: str = knob("cls_map_mean", choices=EPOCH_METRICS)
    mode: str = knob("max", choices=("max", "min"))
    grace_period: int = knob(1, ge=1)
    reduction_factor: int = knob(2, ge=1)


@dataclass
class ResourcesSection:
    cpu: float = knob(1.0, gt=0.0)
    gpu: float = knob(0.0, ge=0.0)


@dataclass
class MlflowSection:
    experiment: str = knob("cobra")


@dataclass
class SweepFile:
    name: str | None = knob(None)
    base: Any = knob(None)
    overrides: Any = knob(None)
    space: Any = knob(None)
    search: SearchSection = field(default_factory=SearchSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    metric: str = knob("seed_miou")
    mode: str = knob("max", choices=("max", "min"))
    repeats: int = knob(1, ge=1, le=MAX_REPEATS)
    stages: Any = knob(None)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    max_concurrent: int = knob(1, ge=1)
    # -1 would be Ray's "retry forever": a trial that always crashes would never end
    max_failures: int = knob(1, ge=0)
    storage: str = knob("ray_results")
    optuna_storage: str | None = knob(None)
    mlflow: MlflowSection = field(default_factory=MlflowSection)


@dataclass(frozen=True)
class Domain:
    """One searched key: a choice of values, or a numeric range."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0

    def describe(self) -> str:
        return (f"{list(self.values)}" if self.kind == "choice"
                else f"{self.kind}[{self.low}, {self.high}]")


@dataclass
class SweepSpec:
    name: str
    file: Path
    base: config_mod.Config
    space: dict[str, Domain]
    algorithm: str = "tpe"
    seed: int = 0
    num_trials: int = 1
    scheduler: str = "none"
    scheduler_metric: str = "cls_map_mean"
    scheduler_mode: str = "max"
    grace_period: int = 1
    reduction_factor: int = 2
    metric: str = "seed_miou"
    mode: str = "max"
    cpu: float = 1.0
    gpu: float = 0.0
    repeats: int = 1
    stages: tuple[str, ...] = ("seeds",)
    max_concurrent: int = 1
    max_failures: int = 1
    storage: str = field(default_factory=lambda: str(Path("ray_results").resolve()))
    experiment: str = "cobra"
    optuna_storage: str | None = None  # None: `cobra.study.storage_url` decides

    @property
    def storage_is_uri(self) -> bool:
        return "://" in self.storage

    @property
    def experiment_dir(self) -> str:
        """Where Ray keeps the sweep: a path all nodes must see (shared FS) or a storage URI."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def base_digest(self) -> str:
        """A digest of what every trial shares: the base config without the keys that only
        say where and how a run goes (`NOT_MEASURED`) and without the replicate seed. Two
        sweeps with the same digest measure the same training-seed noise."""
        kept = {k: v for k, v in config_mod.flatten(self.base).items()
                if k != REPLICATE_KEY and not k.startswith(NOT_MEASURED)}
        text = json.dumps(sorted(kept.items()), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def extreme(self, key: str, default: int, pick) -> int:
        """`pick` (min or max) of the values the space allows for `key`; `default` unsearched."""
        domain = self.space.get(key)
        if domain is None:
            return default
        return int(pick(domain.values) if domain.kind == "choice"
                   else pick((domain.low, domain.high)))

    def projection_warning(self) -> str | None:
        """A warning when some trial's projection losses start after its last epoch: the
        latest start the space allows against the fewest epochs it allows."""
        base = self.base
        start = self.extreme("loss.proj_start_epoch", base.loss.proj_start_epoch, max)
        epochs = self.extreme("train.epochs", base.train.epochs, min)
        loss = dataclasses.replace(base.loss, proj_start_epoch=start)
        return projections_never_start(loss, epochs, base.model.branches == "both")

    def search_space(self) -> dict[str, Domain]:
        """What Optuna searches: the sweep's space, plus the training seed when points are
        repeated (a replicate is one more grid dimension, never a searched knob)."""
        if self.repeats == 1:
            return dict(self.space)
        first = self.base.train.seed
        seeds = tuple(first + i for i in range(self.repeats))
        return {**self.space, REPLICATE_KEY: Domain(REPLICATE_KEY, "choice", seeds)}

    def grid(self) -> dict[str, list[Any]]:
        return {key: list(d.values) for key, d in self.search_space().items()}


def _name(value: Any, file: Path) -> str:
    name = str(value) if value is not None else file.stem
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(f"sweep key 'name' must be letters, digits, '.', '_' or '-' (it names "
                          f"a directory under storage: no '/', '\\' or '..'), got {name!r}")
    return name


def _metric(value: Any, stages: tuple[str, ...]) -> str:
    reported = (*TRIAL_METRICS, *(m for st in stages for m in STAGE_METRICS.get(st, ())))
    if value in reported:
        return value
    for stage, metrics in STAGE_METRICS.items():
        if value in metrics:
            raise ConfigError(f"sweep key 'metric' is {value!r}, which the '{stage}' stage "
                              f"reports; add it to the trials' stages: `stages: [seeds, {stage}]`")
    hint = suggest(str(value), reported) or suggest(str(value).lower(), reported)
    raise ConfigError(f"sweep key 'metric' must be a metric trials report "
                      f"({', '.join(reported)}), got {value!r}{hint}")


def _stages(value: Any) -> tuple[str, ...]:
    """The trial's post-training stages in pipeline order, every prerequisite included:
    `[seeds, masks]` runs seeds → ir_labels → irn → masks (masks need the other two)."""
    if value is None:
        return ("seeds",)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"sweep key 'stages' must be a list of stages such as [seeds, "
                          f"masks], got {value!r}")
    for stage in value:
        if stage not in TRIAL_STAGES:
            raise ConfigError(f"sweep key 'stages' has unknown stage {stage!r}; choose from "
                              f"{', '.join(TRIAL_STAGES)}{suggest(str(stage), TRIAL_STAGES)}")
    last = max(TRIAL_STAGES.index(stage) for stage in value)
    return TRIAL_STAGES[:last + 1]


def _check_repeats(repeats: int, space: dict[str, Domain], algorithm: str) -> None:
    if repeats > 1 and algorithm != "grid":
        raise ConfigError(f"sweep key 'repeats: {repeats}' needs search.algorithm=grid (a "
                          f"{algorithm} search would treat the seed as a knob); use grid or "
                          f"drop 'repeats'")
    if repeats > 1 and REPLICATE_KEY in space:
        raise ConfigError(f"sweep key 'repeats' and '{REPLICATE_KEY}' in space both set the "
                          f"training seed; keep one of them")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"sweep key '{where}' needs finite numbers, got {value!r}")
    return float(value)


def _domain(key: str, raw: Any) -> Domain:
    where = f"space.{key}"
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"sweep key '{where}' is an empty list; give at least one value")
        for i, value in enumerate(raw):
            # one setting twice would be two trials of one point, reported as replicates
            if any(_same(value, earlier) for earlier in raw[:i]):
                raise ConfigError(f"sweep key '{where}' lists {value!r} twice; list each value "
                                  f"once (use 'repeats:' for several training seeds)")
        return Domain(key, "choice", tuple(raw))
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"sweep key '{where}' must be a list of values or one of "
                          f"{{choice|int|uniform|loguniform: ...}}, got {raw!r}")
    kind, arg = next(iter(raw.items()))
    if kind not in DOMAIN_KINDS:
        raise ConfigError(f"unknown domain '{kind}' for '{where}'{suggest(kind, DOMAIN_KINDS)}")
    if kind == "choice":
        return _domain(key, arg)
    if not isinstance(arg, list) or len(arg) != 2:
        raise ConfigError(f"sweep key '{where}.{kind}' needs [low, high], got {arg!r}")
    low, high = (_number(v, f"{where}.{kind}") for v in arg)
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"sweep key '{where}.{kind}' needs 0 < low < high for loguniform and "
                          f"low < high otherwise, got [{low}, {high}]")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"sweep key '{where}.int' needs integer bounds, got [{low}, {high}]")
    return Domain(key, kind, (), low, high)


def _same(a: Any, b: Any) -> bool:
    """Whether two searched values are one setting (`0.1` and `0.10`; not `1` and `true`)."""
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _probe_values(domain: Domain) -> list[Any]:
    """Values that stand for the domain when checking it against the config's types/ranges."""
    if domain.kind == "choice":
        return list(domain.values)
    if domain.kind == "int":
        return [int(domain.low), int(domain.high)]
    return [domain.low, domain.high]


def _base_config(base: Any, overrides: Any, file: Path) -> config_mod.Config:
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ConfigError("sweep key 'overrides' must map dotted config keys to values")
    if base is None or isinstance(base, dict):
        cfg = config_mod.from_dict(base or {})
    elif isinstance(base, str):
        cfg = config_mod.load_config((file.parent / base).resolve())
    else:
        raise ConfigError("sweep key 'base' must be a config path or an inline mapping")
    for key in overrides:
        if key not in config_mod.dotted_keys():
            raise config_mod.unknown_key_error(key, "overrides")
    cfg = config_mod.with_overrides(cfg, overrides)
    if cfg.data.root is not None and not Path(cfg.data.root).expanduser().is_absolute():
        # trials run in their own directories (and on other nodes): pin relative paths to
        # where the sweep was launched (the same path, absolute: nothing left to validate)
        root = str(Path(cfg.data.root).expanduser().resolve())
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))
    return cfg


def _check_space(space: dict[str, Domain], base: config_mod.Config) -> None:
    """Every searched key exists and every value the search can pick is a valid config value."""
    keys = config_mod.dotted_keys()
    for key, domain in space.items():
        if key not in keys:
            raise ConfigError(f"search space key '{key}' is not a config key{suggest(key, keys)} "
                              f"(see `launch.py config --list`)")
        for value in _probe_values(domain):
            config_mod.with_overrides(base, {key: value})
    num_patches = models.num_patches(base.model, base.data.image_size)
    for key, domain in space.items():
        if key.startswith("loss.k_"):
            for value in _probe_values(domain):
                if not 1 <= value <= num_patches:
                    raise ConfigError(
                        f"search space '{key}' reaches {value} but a {base.data.image_size} px "
                        f"input has only {num_patches} patches; use values in 1..{num_patches}")


_SECTIONS = ("search", "scheduler", "resources", "mlflow")


def _read_file(file: Path) -> SweepFile:
    """The sweep file's keys, typed and ranged (`cobra.config.build`)."""
    data = config_mod.read_yaml(file)
    # an empty section (`search:`) is its defaults, as an absent one is
    data = {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}
    try:
        return config_mod.build(SweepFile, data, where="sweep")
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith("unknown") else f"sweep key {text}") from None


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"sweep file '{file}' does not exist; see sweeps/ for examples")
    raw = _read_file(file)
    base = _base_config(raw.base, raw.overrides, file)
    space = _space(raw.space, file, base)
    stages = _stages(raw.stages)
    search, scheduler, resources = raw.search, raw.scheduler, raw.resources
    _check_repeats(raw.repeats, space, search.algorithm)
    if not raw.mlflow.experiment.strip():
        raise ConfigError("sweep key 'mlflow.experiment' is empty; name the MLflow experiment "
                          "(e.g. cobra) or leave the key out")
    spec = SweepSpec(
        name=_name(raw.name, file), file=file, base=base, space=space,
        algorithm=search.algorithm, seed=search.seed, scheduler=scheduler.type,
        scheduler_metric=scheduler.metric, scheduler_mode=scheduler.mode,
        grace_period=scheduler.grace_period, reduction_factor=scheduler.reduction_factor,
        metric=_metric(raw.metric, stages), mode=raw.mode, cpu=resources.cpu,
        gpu=resources.gpu, repeats=raw.repeats, stages=stages,
        max_concurrent=raw.max_concurrent, max_failures=raw.max_failures,
        # a storage URI (s3://, gs://) goes to Ray as is; a path is made absolute for every node
        storage=raw.storage if "://" in raw.storage
        else str(Path(raw.storage).expanduser().resolve()),
        experiment=raw.mlflow.experiment, optuna_storage=raw.optuna_storage)
    spec.num_trials = _num_trials(spec, search.num_trials)
    return spec


def _space(raw_space: Any, file: Path, base: config_mod.Config) -> dict[str, Domain]:
    raw_space = raw_space or {}
    if not isinstance(raw_space, dict) or not raw_space:
        raise ConfigError(f"sweep '{file.name}' has an empty search space; add dotted config "
                          f"keys under 'space:' (e.g. loss.tau: [0.05, 0.1])")
    space = {key: _domain(key, raw) for key, raw in raw_space.items()}
    _check_space(space, base)
    return space


def _num_trials(spec: SweepSpec, num_trials: int | None) -> int:
    """A grid's size (all its points, replicates included) unless capped; 8 for the others."""
    if spec.algorithm != "grid":
        return 8 if num_trials is None else num_trials
    bad = [k for k, d in spec.space.items() if d.kind != "choice"]
    if bad:
        raise ConfigError(f"search.algorithm=grid needs lists of values, but "
                          f"{', '.join(bad)} is a range; list its values or use tpe")
    grid_size = math.prod(len(d.values) for d in spec.search_space().values())
    return grid_size if num_trials is None else num_trials


# `ksn6·kcp2`: a trial's searched values under short names of their keys (`cobra.naming`), so
# MLflow's run list shows every value without cutting the name
trial_name = naming.point_name


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a grid sweep (replicate seeds included), in a stable order."""
    space = spec.search_space()
    return [dict(zip(space, combo, strict=True))
            for combo in itertools.product(*(d.values for d in space.values()))]
