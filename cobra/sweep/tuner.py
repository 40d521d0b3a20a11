"""Run a sweep: Optuna proposes, Ray Tune schedules, MLflow records (parent run + one child per
trial). `RAY_ADDRESS` selects an existing cluster; otherwise a local Ray starts for the sweep."""

import contextlib
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cobra import accel, naming, pretrain, study, tracking
from cobra.data import build_source, resolve_train_split
from cobra.errors import ConfigError
from cobra.provenance import dataset_splits
from cobra.results import RESULTS_FILE, sweep_results
from cobra.runtime import resolve_device
from cobra.stages import seeds
from cobra.sweep.spec import REPLICATE_KEY, SweepSpec, trial_name
from cobra.sweep.trainable import (
    EXPORT_PREFIX,
    INPUT_ERROR,
    STAGING_PREFIX,
    InputErrorStopper,
    TrialContext,
    run_sweep_trial,
)
from cobra.weights import check_backbones

# A trial reports per-epoch metrics (no seed mIoU yet) before its final report; Ray's strict
# check would reject those intermediate results for lacking the sweep metric.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
# TPE samples at random (seeded) until this many trials finished: Optuna's default, named here
# because `--plan` can name exactly those trials before the sweep starts.
TPE_STARTUP_TRIALS = 10


def _optuna_search(spec: SweepSpec, storage=None):
    """Ray's Optuna searcher for the sweep; its study lives in `storage` (an Optuna RDB
    storage, named after the sweep) or, with None, in memory (what `--plan` replays)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class SeedMetricOptunaSearch(OptunaSearch):
        """Optuna sees a trial's value once its seeds are scored; the per-epoch reports before
        that (losses, mAP, for schedulers) do not carry the sweep metric.

        A resumed sweep's searcher is Ray's last snapshot of it, which can be older than the
        study in the database: a trial that finished after the snapshot reports its result
        again (`run_sweep_trial` hands MLflow's back to Ray), and Optuna refuses to update a
        finished trial. The study already holds that result, so the report is dropped."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric not in result:
                return
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                super().on_trial_result(trial_id, result)

    distributions = {}
    for key, d in spec.search_space().items():
        if d.kind == "choice":
            distributions[key] = optuna.distributions.CategoricalDistribution(list(d.values))
        elif d.kind == "int":
            distributions[key] = optuna.distributions.IntDistribution(int(d.low), int(d.high))
        else:
            distributions[key] = optuna.distributions.FloatDistribution(
                d.low, d.high, log=d.kind == "loguniform")
    if spec.algorithm == "grid":
        sampler = optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)
    elif spec.algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=TPE_STARTUP_TRIALS)
    return SeedMetricOptunaSearch(space=distributions, metric=spec.metric, mode=spec.mode,
                                  sampler=sampler, study_name=spec.name, storage=storage)


def _readable_name(trial) -> str:
    """`ksn5-kcp20_a1b2c3d4`: the console and the results directory say what was tried (in
    ASCII: the name is a directory, maybe on remote storage)."""
    return f"{trial_name(trial.config).replace(naming.SEPARATOR, '-')}_{trial.trial_id}"


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler != "asha":
        return FIFOScheduler()
    return ASHAScheduler(metric=spec.scheduler_metric, mode=spec.scheduler_mode,
                         time_attr="epoch", max_t=spec.base.train.epochs,
                         grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def _preflight(spec: SweepSpec, resume: bool) -> tracking.Store:
    """Everything that can fail fast does, before Ray starts: the resources a trial asks for,
    the tracker, the data, the weights, the experiment directory. Returns the tracking store."""
    warnings = [spec.projection_warning()]
    if not _cluster_address():  # a local Ray gets this machine's CPUs and GPUs
        import torch

        check_resources(spec, os.cpu_count() or 1, torch.cuda.device_count(), "this machine")
        warnings.append(accel.slow_amp_warning(spec.base.train.amp,
                                               resolve_device(spec.base.train.device)))
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr, flush=True)
    store = tracking.open_store()
    exists = _sweep_exists(spec)
    if exists and not resume:
        raise ConfigError(f"sweep '{spec.name}' already exists at {spec.experiment_dir}; pass "
                          f"--resume to continue it, or give the sweep another name")
    if resume and not exists:
        raise ConfigError(f"no sweep '{spec.name}' to resume at {spec.experiment_dir}; "
                          f"start it without --resume")
    if resume and tracking.find_sweep_run(store, spec.experiment, spec.name) is None:
        raise ConfigError(f"no sweep '{spec.name}' to resume in MLflow experiment "
                          f"'{spec.experiment}' of {store.redacted}; run it from the "
                          f"directory (or with the MLFLOW_TRACKING_URI) it was started with")
    # Written once here (synthetic) and checked: trials must not race to create the dataset.
    build_source(spec.base, resolve_train_split(spec.base))
    build_source(spec.base, spec.base.data.val_split)
    # the seed split's problems (too large for the seed pass, masks unusable) before any trial
    seeds.check_inputs(spec.base, build_source(spec.base, spec.base.data.seed_split))
    # Likewise the builtin weights: made once here, not by every trial at once; and checked
    # against the networks here, not by every trial failing alike.
    check_backbones(spec.base)
    weights = pretrain.resolve(spec.base.model.pretrained, spec.base,
                               pretrain.backbones_of(spec.base))
    check_backbones(spec.base, weights)
    return store


def _lock_sweep(spec: SweepSpec) -> Path | None:
    """One driver per sweep: a second identical `sweep` command (or a `--resume` while it
    runs) is refused, not run beside it into the same directory and a second parent run. The
    lock sits beside the sweep's directory in local storage; remote storage is not locked."""
    if spec.storage_is_uri:
        return None
    from cobra.locks import hold

    _check_storage(spec)  # made and writable, before the lock is taken in it
    lock = Path(spec.storage) / f".{spec.name}.lock"
    hold(lock, f"sweep '{spec.name}' ({spec.experiment_dir})")
    return lock


def check_resources(spec: SweepSpec, cpus: float, gpus: float, where: str) -> None:
    """A trial asking for more than one node has would wait, PENDING, forever."""
    if spec.cpu > cpus:
        raise ConfigError(f"sweep key 'resources.cpu' is {spec.cpu:g} but {where} has "
                          f"{cpus:g} CPUs; ask for at most {cpus:g} per trial")
    if spec.gpu > gpus:
        raise ConfigError(f"sweep key 'resources.gpu' is {spec.gpu:g} but {where} has "
                          f"{gpus:g} GPUs; ask for at most {gpus:g} per trial (0 on a CPU)")


def _check_cluster_resources(spec: SweepSpec) -> None:
    """On a cluster (RAY_ADDRESS), a trial must fit the largest live node."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    check_resources(spec, cpus, gpus, "the largest node of the Ray cluster")


def _note(spec: SweepSpec, results: str | None = None, view_link: str | None = None) -> str:
    """The sweep's description: what varies, how to read it, and (once the sweep ended) the
    results table with links to the trials. While the sweep runs it is the parent run's
    description (with `view_link`, the sweep's charts); at the end, the RESULTS_FILE
    artifact, below the short results note that replaces it."""
    short = naming.short_names(spec.space)
    space = "\n".join(f"- `{key}` (`{short[key]}` in run names): {d.describe()}"
                      for key, d in spec.space.items())
    repeats = (f", each point with {spec.repeats} training seeds (`train.seed`)"
               if spec.repeats > 1 else "")
    note = (f"Sweep `{spec.name}` ({spec.algorithm}, {spec.num_trials} trials{repeats}), ranked by "
            f"`{spec.metric}` ({spec.mode}); trials run "
            f"{' → '.join(('train', *spec.stages))}.\n\nSearched:\n{space}\n\nEvery config key is "
            "a param of each trial: in Compare, switch on *Show diff only* to see just these.")
    if view_link:
        note = f"{view_link}\n\n{note}"
    if results:
        note = f"{results}\n\n---\n\n{note}"
    return note


def _save_view(spec: SweepSpec, store: tracking.Store, parent: str) -> str:
    """The sweep's saved view in the MLflow UI (its trials, its metric against the searched
    keys); returns the markdown link that opens it."""
    return tracking.save_sweep_view(store, parent, spec.name, spec.metric, spec.mode,
                                    list(spec.space), REPLICATE_KEY if spec.repeats > 1 else None)


def sweep_params(spec: SweepSpec) -> dict[str, str]:
    """The parent run's params: what a sweep searched, how, and by which metric."""
    params = {f"space.{key}": d.describe() for key, d in spec.space.items()}
    params.update({"metric": spec.metric, "mode": spec.mode, "num_trials": spec.num_trials,
                   "search.algorithm": spec.algorithm, "search.seed": spec.seed,
                   "repeats": spec.repeats, "stages": ",".join(spec.stages),
                   "scheduler": spec.scheduler})
    return {k: str(v) for k, v in params.items()}


def _check_storage(spec: SweepSpec) -> None:
    """The storage path must be writable here; on a cluster it must be the same shared path on
    every node (Ray's workers write checkpoints there directly)."""
    if spec.storage_is_uri:
        return
    root = Path(spec.storage)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".cobra-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"sweep storage '{root}' is not writable ({exc.strerror}); set "
                          f"'storage:' to a shared directory every Ray node can write, or an "
                          f"s3:// URI") from None


def _sweep_exists(spec: SweepSpec) -> bool:
    if spec.storage_is_uri:
        from ray.tune import Tuner

        return Tuner.can_restore(spec.experiment_dir)
    return (Path(spec.experiment_dir) / "tuner.pkl").exists()


def _cluster_address() -> str | None:
    """RAY_ADDRESS when it names a cluster; None for a local Ray ("" or "local")."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return address if address and address != "local" else None


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = _cluster_address()
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local": a Ray of this sweep's own, never a cluster someone started on this machine
        # (plain ray.init() joins one), whose resources the preflight did not check
        ray.init(address="local", include_dashboard=False, log_to_driver=True)


def run_sweep(spec: SweepSpec, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep to the end; returns the best trial and the sweep's counts."""
    from cobra.locks import release

    lock = _lock_sweep(spec)
    try:
        return _run_sweep(spec, resume)
    finally:
        if lock is not None:
            release(lock)


def _run_sweep(spec: SweepSpec, resume: bool) -> dict[str, Any]:
    store = _preflight(spec, resume)
    optuna_url = study.storage_url(spec.optuna_storage, store.uri)
    optuna_storage = study.open_storage(optuna_url)
    study.check_fresh(optuna_storage, optuna_url, spec.name, resume)
    _init_ray()
    if _cluster_address():
        _check_cluster_resources(spec)
    datasets = tuple(dataset_splits(spec.base, ("train", *spec.stages)))
    parent = _parent_run(spec, store, datasets, resume, optuna_url)
    ctx = TrialContext(base_config=spec.base, store=store, parent_run_id=parent,
                       metric=spec.metric, experiment_dir=spec.experiment_dir,
                       stages=spec.stages, cpus=spec.cpu, datasets=datasets)
    try:
        tuner = _tuner(spec, ctx, resume, optuna_storage)
        # num_to_keep=1 (one checkpoint per trial) makes Ray snapshot the experiment state at
        # every trial-epoch, and warn about it each time. The snapshot is Ray's small state
        # files only (benchmarks/bench.py --sweep: the whole sweep's overhead is 1.14x), so the
        # warning, printed some 30 times by the demo sweep, is silenced unless the user set it.
        os.environ.setdefault(SNAPSHOT_WARNING_ENV, "0")
        with _sigterm_as_ctrl_c():
            results = tuner.fit()
        _remove_staging_leftovers(spec)
    except BaseException as exc:
        tracking.finish_sweep(store, parent, None, None, spec.metric, status="KILLED")
        if isinstance(exc, KeyboardInterrupt):
            _print_resume_hint(spec)
        raise
    bad_input = first_input_error(results)
    if bad_input is not None:
        tracking.finish_sweep(store, parent, None, None, spec.metric, status="FAILED")
        raise ConfigError(f"sweep '{spec.name}' stopped: {bad_input}; fix it, then start the "
                          f"sweep again (remove {spec.experiment_dir} or rename the sweep)")
    if _interrupted(spec, results):
        # Ray caught Ctrl+C, stopped the trials and saved the search state: say how to go on.
        tracking.finish_sweep(store, parent, None, None, spec.metric, status="KILLED")
        _print_resume_hint(spec)
        raise KeyboardInterrupt
    return _summarise(spec, store, parent, results)


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """A batch scheduler ends a job with SIGTERM (SLURM's scancel, its time limit): the driver
    takes it as Ctrl+C, so Ray stops the trials and saves the sweep's state, and the parent run
    ends KILLED with the resume hint, instead of the driver dying mid-snapshot."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parent_run(spec: SweepSpec, store: tracking.Store, datasets: tuple[dict[str, Any], ...],
                resume: bool, optuna_url: str) -> str:
    """The sweep's parent run: a resumed sweep's own, reopened, else a new one that says what
    the sweep searches, how, and on which data."""
    parent = tracking.find_sweep_run(store, spec.experiment, spec.name) if resume else None
    if parent is not None:
        tracking.reopen_run(store, parent)
        return parent
    parent = tracking.start_sweep_run(store, spec.experiment, spec.name, spec.file,
                                      spec.metric, spec.mode,
                                      tags={tracking.tags.BASE_CONFIG: spec.base_digest(),
                                            tracking.tags.OPTUNA_STORAGE:
                                                study.public_url(optuna_url),
                                            tracking.tags.OPTUNA_STUDY: spec.name})
    tracking.MlflowReporter(store, parent).log_params(sweep_params(spec))
    tracking.set_description(store, parent, _note(spec, view_link=_save_view(spec, store, parent)))
    tracking.log_dataset_inputs(store, parent, datasets)
    return parent


def _tuner(spec: SweepSpec, ctx: TrialContext, resume: bool, optuna_storage):
    """Ray's Tuner for the sweep: restored from its storage on resume (the searcher with it,
    reconnecting to its Optuna study), else a new one."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_sweep_trial, ctx=ctx),
                                    {"cpu": spec.cpu, "gpu": spec.gpu})
    if resume:
        return tune.Tuner.restore(spec.experiment_dir, trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_optuna_search(spec, optuna_storage), scheduler=_scheduler(spec),
            num_samples=spec.num_trials, max_concurrent_trials=spec.max_concurrent,
            trial_name_creator=_readable_name, trial_dirname_creator=_readable_name,
            # a finished trial's worker takes the next trial: torch, timm and MLflow are
            # imported once per worker, not once per trial (~10 s each on 2 cores)
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=spec.storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            stop=InputErrorStopper(), verbose=1))


def _remove_staging_leftovers(spec: SweepSpec) -> None:
    """Short-lived staging directories (checkpoint hand-over, MLflow export) in the trials' run
    directories that a trial could not remove: Ray may end a trial's actor mid hand-over (seen
    in the grid test). The driver, which owns the sweep, clears them once every trial ended."""
    root = Path(spec.experiment_dir)
    if "://" in spec.experiment_dir or not root.is_dir():
        return  # remote storage: the same files, but not ours to list here
    for prefix in (STAGING_PREFIX, EXPORT_PREFIX):
        for leftover in root.glob(f"*/run/{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _print_resume_hint(spec: SweepSpec) -> None:
    """However the interruption reached us (Ray's handler or a bare Ctrl+C), say how to go on."""
    print(f"sweep '{spec.name}' interrupted; continue it with "
          f"`launch.py sweep {spec.file} --resume`", file=sys.stderr)


def first_input_error(results) -> str | None:
    """The message of the first trial that stopped on the user's input, if any."""
    for result in results:
        message = (result.metrics or {}).get(INPUT_ERROR)
        if message:
            return message
    return None


def _interrupted(spec: SweepSpec, results) -> bool:
    ended = results.num_terminated + results.num_errors
    return len(results) < spec.num_trials or ended < len(results)


def _summarise(spec: SweepSpec, store: tracking.Store, parent: str, results) -> dict[str, Any]:
    """End the parent run with the sweep's results and best trial. The best is MLflow's pick
    (`tracking.pick_best`), the very one `launch.py final --best` continues, not a second
    ranking of Ray's results."""
    trials = tracking.trials_of(store, parent)
    best = tracking.pick_best(trials, spec.metric, spec.mode)
    best_run = best.run_id if best else None
    best_value = best.metrics[tracking.sanitize_key(spec.metric)] if best else None
    links = [tracking.artifact_link(store, parent, RESULTS_FILE, "all cells"),
             _save_view(spec, store, parent)]
    summary = sweep_results(store, parent, trials, spec.metric, spec.mode, spec.name, links)
    tracking.MlflowReporter(store, parent).log_text(_note(spec, summary.full), RESULTS_FILE)
    tracking.set_description(store, parent, summary.note)
    tracking.finish_sweep(store, parent, best_run, best_value, spec.metric,
                          cell_mean=summary.best_mean)
    return {"sweep": spec.name, "parent_run_id": parent, "trials": len(results),
            "errored": sum(r.error is not None for r in results),
            "scored": len(tracking.scored_trials(trials, spec.metric)),
            "best_run_id": best_run, f"best_{spec.metric}": (None if summary.best_mean is None
                                                      else round(summary.best_mean, 4)),
            f"best_trial_{spec.metric}": best_value,
            "tracking_uri": store.redacted, "experiment_dir": str(spec.experiment_dir)}
