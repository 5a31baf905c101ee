"""Run a search: an Optuna study over the space, stored so that it resumes and many workers can share it.

Storage: an SQLite file in the output folder by default (re-running the same command resumes the study);
`--storage postgresql://...` for workers on several machines. A heartbeat marks a killed worker's trial
failed and a retry callback re-queues its parameters, so nothing finished is lost and nothing is half-done.

The heartbeat's timing comes from the environment: ARCHDSL_HEARTBEAT_GRACE (seconds without a heartbeat before
a RUNNING trial counts as dead; default 20) and ARCHDSL_HEARTBEAT_INTERVAL (seconds between a live trial's
heartbeats; default 5, or a quarter of a smaller grace period). A resumed run fails a killed worker's trial
only once the grace period has passed since its last heartbeat; every worker sharing a storage should use
the same values, with the interval well below the grace period.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import optuna
import torch

from archdsl.errors import ArchError
from archdsl.search.data import check_split, load
from archdsl.search.interrupt import StopAt, done, requeue_interrupted, retries_waiting, \
    why_none_completed
from archdsl.search.outdir import prepare, write_errors
from archdsl.search.latency import calibrate
from archdsl.search.proposal import ArchProposer
from archdsl.search.spec import load_spec
from archdsl.search.storage import check_sqlite, lock_for, sqlite_file
from archdsl.search.train import TrialFailed
from archdsl.search.trial import TrialRunner, latency_args

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def heartbeat_timing() -> tuple[int, int]:
    """(interval, grace period) in seconds, from ARCHDSL_HEARTBEAT_INTERVAL / ARCHDSL_HEARTBEAT_GRACE."""
    def read(name: str, default: int) -> int:
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ArchError(f"{name}={text!r} is not a whole number of seconds") from None
        if value < 1:
            raise ArchError(f"{name}={value}: give 1 second at least")
        return value

    grace = read("ARCHDSL_HEARTBEAT_GRACE", 20)
    interval = read("ARCHDSL_HEARTBEAT_INTERVAL", min(5, max(1, grace // 4)))
    if interval >= grace:
        raise ArchError(f"ARCHDSL_HEARTBEAT_INTERVAL={interval} must be below ARCHDSL_HEARTBEAT_GRACE={grace}",
                        hint="a live trial would otherwise be taken for a dead one")
    return interval, grace


def search_threads(threads: int | None) -> int:
    """Intra-op threads for training: --threads, else OMP_NUM_THREADS, else 1. One per job by default: on a
    shared machine, threads that wait for each other's cores made a training step 25x slower (issue 12)."""
    if threads is None:
        text = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(text) if text.isdigit() else 1
    if threads < 1:
        raise ArchError(f"--threads {threads}: give 1 thread at least")
    return threads


def storage_url(url: str | None, out: Path) -> str:
    """The study's storage URL: --storage, else the SQLite file OUT/study.db (what workers started for
    --devices are given too)."""
    return url if url is not None else f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def make_storage(url: str | None, out: Path):
    interval, grace = heartbeat_timing()
    db = sqlite_file(url, out)
    if db is not None:
        check_sqlite(db)
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
    url = storage_url(url, out)
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna, and stable in use since v2.8
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry is not None:
            callbacks = {"heartbeat_stale_trial_callback": retry(max_retry=2)}
        else:
            callbacks = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
        try:
            return _rdb_storage(url, engine_kwargs=kwargs, heartbeat_interval=interval, grace_period=grace,
                                **callbacks)
        except ImportError as e:  # no driver for the URL's database (the URL may hold a password: not shown)
            raise ArchError(f"no database driver for a {url.split(':', 1)[0]}:// storage ({e.__cause__ or e})",
                            hint="for PostgreSQL: pip install psycopg2-binary and give postgresql+psycopg2://..., "
                                 "or pip install 'psycopg[binary]' (SQLAlchemy 2.1 reads postgresql:// "
                                 "with it)") from None


def _rdb_storage(url: str, attempts: int = 6, **kwargs):
    """RDBStorage(url, ...), tried again when workers that start together race to create the tables of an empty
    database (PostgreSQL then refuses the second CREATE TYPE / CREATE TABLE: IntegrityError or
    ProgrammingError; SQLite: OperationalError "table ... already exists", also when another program -- a
    report, a dashboard -- opens the study file just as the search creates it); the retry finds the tables made
    and goes on."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
        except sqlalchemy.exc.OperationalError as e:  # no server, wrong database, refused login, disk full
            why = str(e.orig or e).strip()
            if "already exists" in why and attempt < attempts - 1:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ArchError(f"cannot open the {url.split(':', 1)[0]}:// storage: {why}",
                            hint="free some space" if "full" in why else
                            "check the --storage URL and that the database server is running") from None


SAMPLERS = ("evolution", "nsga2", "tpe", "random", "grid")
DEFAULT_SAMPLER = "evolution"  # beat random and Optuna's samplers on equal wall-clock: BENCHMARKS.md section 1


def make_sampler(name: str, n_objectives: int, seed: int | None, space_grid: dict | None = None, propose=None):
    """`propose` (evolution only): checks a candidate before it becomes a trial (archdsl.search.proposal)."""
    name = name or DEFAULT_SAMPLER
    if name == "evolution":
        from archdsl.search.evolution import EvolutionSampler

        return EvolutionSampler(seed=seed, propose=propose)
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
    raise ArchError(f"unknown sampler '{name}'", hint=f"use {', '.join(SAMPLERS)}")


def _grid(program, spec, fixed):
    """The grid of a space made of choices only (dimensions met with the defaults; conditional ones too
    when reachable from the defaults)."""
    import archdsl
    from archdsl.frontend.choices import DefaultResolver

    r = DefaultResolver(fixed)
    archdsl.build(program, spec.settings.get("model"), resolver=r)
    if any(d.kind != "choice" for d in r.dims.values()):
        return None
    from archdsl.search.trial_choices import _categories

    return {name: _categories(d.labels) for name, d in r.dims.items() if name not in fixed}


def _seed_offset(study, storage_url: str | None, starts: int = 0) -> int:
    """What to add to --seed so that a sampler does not replay proposals already made: a resumed study
    would otherwise propose the architectures of its first trials again (duplicates that use up the trial
    budget), and workers started together on a shared storage would propose the same ones in lockstep (each
    architecture trained twice, since neither is complete when the other starts). 0 for a new study in a
    local folder (a fresh run with a given seed is reproducible); the trials already in the study when
    resuming, and the runs started on it before (`starts`: two processes started together on one --out
    see the same trials); with --storage, the worker's host and process as well (runs of several workers
    are not reproducible anyway)."""
    offset = len(study.get_trials(deepcopy=False)) + 1_000_003 * starts
    if storage_url is not None:
        import socket
        import zlib

        offset += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return offset


def open_study(program, spec, out: Path, storage_url: str | None, study_name: str | None, sampler: str | None,
               seed: int | None, fixed: dict):
    directions = [o.direction for o in spec.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = sampler or spec.settings.get("sampler")
    grid = _grid(program, spec, fixed) if name == "grid" else None  # --sampler grid or `sampler = grid`
    propose = ArchProposer(program, spec, fixed)
    with lock_for(sqlite_file(storage_url, out)):  # processes starting together on one SQLite file take turns
        storage = make_storage(storage_url, out)
        study = optuna.create_study(
            study_name=study_name or spec.name, storage=storage, directions=directions, load_if_exists=True,
            sampler=make_sampler(name, len(directions), seed, grid, propose),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
        starts = study.user_attrs.get("starts", 0)
        study.set_user_attr("starts", starts + 1)
    offset = _seed_offset(study, storage_url, starts)
    if seed is not None and offset:
        study.sampler = make_sampler(name, len(directions), (seed + offset) % 2**31, grid, propose)
    saved = study.user_attrs.get("objectives")
    names = [f"{o.direction} {o.metric}" for o in spec.objectives]
    if saved is not None and saved != names:
        raise ArchError(f"study '{study.study_name}' was created with objectives {saved}, not {names}",
                        hint="use another --study name or --out folder for a different search")
    if saved is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" in Optuna
            study.set_metric_names([o.metric for o in spec.objectives])  # optuna-dashboard's axis labels
        study.set_user_attr("objectives", names)
        study.set_user_attr("file", program.file)
        study.set_user_attr("dataset", spec.dataset)
        study.set_user_attr("dataset_args", list(spec.dataset_args))
        if spec.objective("latency") is not None:  # the unit of the latency objective (archdsl.search.latency)
            args = latency_args(spec)
            study.set_user_attr("latency_args", args)
            study.set_user_attr("latency_reference_ms", round(calibrate(args["batch"], args["device"],
                                                                        args["threads"]), 5))
        study.set_user_attr("dataset_kwargs", dict(spec.dataset_kwargs))
    return study


def _check_fixed(program, spec, fixed: dict):
    """Build the space's default point with the --set values: unknown names and values outside their
    choices are reported before the study starts. Returns its graph."""
    import archdsl
    from archdsl.frontend.choices import DefaultResolver

    return archdsl.build(program, spec.settings.get("model"), resolver=DefaultResolver(fixed))


class RunEnded(Exception):
    """A search that ended without the results asked for: interrupted (Ctrl-C), or no trial of the run
    completed. Carries what run_search returns, so the caller can still write the report."""

    def __init__(self, message: str, study, spec, data, seconds: float, status: int):
        super().__init__(message)
        self.message, self.status = message, status
        self.results = (study, spec, data, seconds)


def run_search(program, *, search: str | None = None, trials: int | None = None, timeout: float | None = None,
               jobs: int = 1, storage: str | None = None, study_name: str | None = None, sampler: str | None = None,
               seed: int | None = 0, out: Path = Path("runs/search"), fixed: dict | None = None,
               progress: bool = True, settings: dict | None = None, threads: int | None = None,
               device: str | None = None, launch: dict | None = None):
    """Run (or resume) the search; returns (study, spec, data, seconds). Raises RunEnded when interrupted
    or when every trial of this run failed or was infeasible."""
    spec = load_spec(program, search, settings)
    trials = trials if trials is not None else int(spec.settings.get("trials", 20))
    timeout = timeout if timeout is not None else spec.settings.get("timeout")
    seed = seed if seed is not None else int(spec.settings.get("seed", 0))
    jobs = jobs if jobs and jobs > 1 else int(spec.settings.get("jobs", jobs or 1))
    G = _check_fixed(program, spec, fixed or {})  # a misspelled --set fails now, not as 60 infeasible trials
    out = prepare(out)
    data = load(spec.dataset, spec.dataset_args, spec.dataset_span, spec.settings.get("val_fraction", 0.2),
                kwargs=spec.dataset_kwargs)
    runner = TrialRunner(program, spec, data, out, fixed or {}, seed or 0, device=device)
    runner.check_input(G)  # the model's input against the data set, before the study starts
    study = open_study(program, spec, out, storage, study_name, sampler, seed, fixed or {})
    check_split(study, data)
    if launch is not None and "launch" not in study.user_attrs:
        study.set_user_attr("launch", launch)  # what `archdsl worker` rebuilds the search from (workers.py)
    # a worker started by `search --devices` gets its thread count from its parent (workers.py)
    inherited = int(os.environ.get("ARCHDSL_WORKER_THREADS", 0)) or None
    torch.set_num_threads(search_threads(threads if threads is not None else inherited))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" in Optuna
        optuna.storages.fail_stale_trials(study)  # a trial left RUNNING by a killed run: failed and queued again
    before = {t.number for t in study.get_trials(deepcopy=False)}
    remaining = max(0, trials - done(study), retries_waiting(study))
    callbacks = [StopAt(trials)]
    display = None
    if progress and remaining:
        from archdsl.search.progress import Progress

        display = Progress(study, spec, trials, timeout)
        callbacks.append(display.on_trial)
        runner.on_epoch = display.on_epoch
    # Optuna logs each failed trial with its traceback; the reason is kept with the trial (user attr
    # "error" or "interrupted") and summed up at the end, and a traceback reads as a crash
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    t0 = time.perf_counter()
    interrupted = False
    try:
        if display:
            display.start()
        if remaining:
            with runner.interrupts, write_errors():
                study.optimize(runner, n_trials=remaining, timeout=timeout, n_jobs=jobs, callbacks=callbacks,
                               catch=(TrialFailed, RuntimeError, ValueError, ArchError), gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if display:
            display.stop()
    seconds = time.perf_counter() - t0
    if interrupted or runner.interrupts.requested:
        retried = requeue_interrupted(study)
        again = (f"; trial{'s' * (len(retried) > 1)} {', '.join(map(str, retried))} "
                 f"run{'s' * (len(retried) == 1)} again") if retried else ""
        raise RunEnded(f"interrupted after {done(study)} of {trials} trials{again}: run the same command to resume",
                       study, spec, data, seconds, 130)
    ran = [t for t in study.get_trials(deepcopy=False) if t.number not in before and t.state in FINISHED]
    if ran and not any(t.state == optuna.trial.TrialState.COMPLETE for t in ran):
        raise RunEnded(f"none of the {len(ran)} trials of this run completed: {why_none_completed(ran)}",
                       study, spec, data, seconds, 2)
    return study, spec, data, seconds
