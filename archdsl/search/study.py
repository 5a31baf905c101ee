"""Run a search: an Optuna study over the space, stored so that it resumes and many workers can share it.

Storage: an SQLite file in the output folder by default (re-running the same command resumes the study);
`--storage postgresql://...` for workers on several machines. A heartbeat marks a killed worker's trial
failed and a retry callback re-queues its parameters, so nothing finished is lost and nothing is half-done.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import optuna
import torch

from archdsl.errors import ArchError
from archdsl.search.data import load
from archdsl.search.spec import load_spec
from archdsl.search.train import TrialFailed
from archdsl.search.trial import TrialRunner

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def make_storage(url: str | None, out: Path):
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(out / 'study.db').resolve()}"
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna, and stable in use since v2.8
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry is not None:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=5, grace_period=20,
                                              heartbeat_stale_trial_callback=retry(max_retry=2))
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=5, grace_period=20,
                                          failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2))


def make_sampler(name: str, n_objectives: int, seed: int | None, space_grid: dict | None = None):
    name = name or ("nsga2" if n_objectives > 1 else "tpe")
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if not space_grid:
            raise ArchError("--sampler grid needs a space made of choices only (int/float ranges have no grid)")
        return optuna.samplers.GridSampler(space_grid, seed=seed)
    raise ArchError(f"unknown sampler '{name}'", hint="use nsga2, tpe, random or grid")


def _grid(program, spec, fixed):
    """The grid of a space made of choices only (dimensions met with the defaults; conditional ones too
    when reachable from the defaults)."""
    import archdsl
    from archdsl.frontend.space import DefaultResolver

    r = DefaultResolver(fixed)
    archdsl.build(program, spec.settings.get("model"), resolver=r)
    if any(d.kind != "choice" for d in r.dims.values()):
        return None
    return {name: list(d.labels) for name, d in r.dims.items() if name not in fixed}


def open_study(program, spec, out: Path, storage_url: str | None, study_name: str | None, sampler: str | None,
               seed: int | None, fixed: dict):
    directions = [o.direction for o in spec.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url, out)
    grid = _grid(program, spec, fixed) if sampler == "grid" else None
    study = optuna.create_study(
        study_name=study_name or spec.name, storage=storage, directions=directions, load_if_exists=True,
        sampler=make_sampler(sampler or spec.settings.get("sampler"), len(directions), seed, grid),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
    saved = study.user_attrs.get("objectives")
    names = [f"{o.direction} {o.metric}" for o in spec.objectives]
    if saved is not None and saved != names:
        raise ArchError(f"study '{study.study_name}' was created with objectives {saved}, not {names}",
                        hint="use another --study name or --out folder for a different search")
    if saved is None:
        study.set_user_attr("objectives", names)
        study.set_user_attr("file", program.file)
        study.set_user_attr("dataset", spec.dataset)
    return study


def run_search(program, *, search: str | None = None, trials: int | None = None, timeout: float | None = None,
               jobs: int = 1, storage: str | None = None, study_name: str | None = None, sampler: str | None = None,
               seed: int | None = 0, out: Path = Path("runs/search"), fixed: dict | None = None,
               progress: bool = True, settings: dict | None = None):
    spec = load_spec(program, search, settings)
    trials = trials if trials is not None else int(spec.settings.get("trials", 20))
    timeout = timeout if timeout is not None else spec.settings.get("timeout")
    data = load(spec.dataset, spec.dataset_args, spec.span, float(spec.settings.get("val_fraction", 0.2)))
    out = Path(out)
    study = open_study(program, spec, out, storage, study_name, sampler, seed, fixed or {})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    runner = TrialRunner(program, spec, data, out, fixed or {}, seed or 0)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    remaining = max(0, trials - done)
    callbacks = [optuna.study.MaxTrialsCallback(trials, states=FINISHED)]
    display = None
    if progress and remaining:
        from archdsl.search.progress import Progress

        display = Progress(study, spec, trials, timeout)
        callbacks.append(display.on_trial)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    try:
        if display:
            display.start()
        if remaining:
            study.optimize(runner, n_trials=remaining, timeout=timeout, n_jobs=jobs, callbacks=callbacks,
                           catch=(TrialFailed, RuntimeError, ValueError, ArchError), gc_after_trial=True)
    finally:
        if display:
            display.stop()
    return study, spec, data, time.perf_counter() - t0
