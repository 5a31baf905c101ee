"""The `archdsl` search commands: search, worker, report."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from archdsl.cli_args import above_zero as _above_zero, count as _count, overrides as _overrides
from archdsl.errors import ArchError


def cmd_search(args) -> int:
    import archdsl
    from archdsl.search.outdir import prepare
    from archdsl.search.report import write_report
    from archdsl.search.spec import override_program
    from archdsl.search.study import RunEnded, run_search, storage_url

    from archdsl.search.workers import device_list, launch_record, run_workers

    program = archdsl.parse(Path(args.file))
    override_program(program, args.search, args.objective, args.constraint)
    out = prepare(args.out)  # before Path(): Path("") would be the current folder
    devices = device_list(args.devices) if args.devices else None
    kwargs = dict(search=args.search, timeout=args.timeout, storage=args.storage, study_name=args.study,
                  sampler=args.sampler, seed=args.seed, out=out, fixed=_overrides(program, args.set),
                  threads=args.threads, settings={"model": args.model} if args.model else None,
                  launch=launch_record(program, args))
    ended = None
    try:
        if devices is None:
            study, spec, data, seconds = run_search(program, trials=args.trials, jobs=args.jobs,
                                                    progress=not args.quiet, **kwargs)
        else:  # one worker process per device: this process creates the study, checks everything, then waits
            t0 = time.perf_counter()
            study, spec, data, _ = run_search(program, trials=0, progress=False, **kwargs)
            run_workers(storage_url(args.storage, out), study.study_name, out, devices, args.jobs or 1)
            seconds = time.perf_counter() - t0
    except RunEnded as e:  # interrupted, or nothing completed: still report what there is
        ended = e
        study, spec, data, seconds = e.results
    summary = write_report(study, out, data, program, study_dir=out)
    _print_front(summary, out, seconds)
    if ended is not None:
        print(f"{'' if ended.status == 130 else 'error: '}{ended.message}", file=sys.stderr)
        return ended.status
    return 0


def cmd_worker(args) -> int:
    import optuna

    from archdsl.search.spec import override_program
    from archdsl.search.study import FINISHED, make_storage, run_search
    from archdsl.search.workers import device_list, program_from, worker_name

    out = Path(args.out)
    device = device_list(args.device)[0] if args.device else None
    storage = make_storage(args.storage, out)
    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        from archdsl.errors import did_you_mean

        names = optuna.get_all_study_names(storage)
        raise ArchError(f"no study '{args.study}' in the storage", hint=did_you_mean(args.study, names)
                        or "start it with `archdsl search FILE --storage URL --study NAME` first") from None
    launch = study.user_attrs.get("launch")
    if launch is None:
        raise ArchError(f"study '{args.study}' does not record its search (it was started by an older archdsl)",
                        hint="join it with `archdsl search FILE --storage URL --study NAME` instead")
    program = program_from(launch, out)
    override_program(program, launch["search"], launch["objective"], launch["constraint"])
    study, spec, data, seconds = run_search(
        program, search=launch["search"], trials=args.trials or launch["trials"], storage=args.storage,
        study_name=args.study, sampler=launch["sampler"], seed=None, out=out,
        fixed=_overrides(program, launch["set"]), progress=not args.quiet, device=device)
    new = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.user_attrs.get("worker") == worker_name()]
    print(f"worker: {len(new)} trials finished in {seconds:.0f}s; study {study.study_name} holds "
          f"{len(study.get_trials(deepcopy=False, states=FINISHED))} (report: archdsl report NAME --storage URL)")
    return 0


def _print_front(summary: dict, out: Path, seconds: float | None = None) -> None:
    counts = summary["trials"]
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    print(f"study {summary['study']}: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned or "
          f"infeasible, {counts.get('fail', 0)} failed{took}")
    for m in summary["pareto"]:
        objs = ", ".join(f"{k} = {v:.4g}" for k, v in m["objectives"].items())
        test = f", test accuracy {m['test_accuracy']:.4f}" if m.get("test_accuracy") is not None else ""
        if m.get("latency_final_ms") is not None:  # the front timed again, together (archdsl.search.report)
            test += f", latency re-measured {m['latency_final_ms']:.4g} ms"
        print(f"  trial {m['number']}: {objs}, params {m.get('params', 0):,}{test} -> {m.get('arch', '-')}")
    if "hypervolume" in summary:
        print(f"hypervolume {summary['hypervolume']:.4g} (reference {summary['hypervolume_reference']})")
    print(f"wrote {out / 'pareto.json'}")


def cmd_report(args) -> int:
    import optuna

    from archdsl.search.report import write_report
    from archdsl.search.study import make_storage

    from archdsl.search.outdir import prepare
    from archdsl.search.storage import check_sqlite

    out = prepare(args.out)
    storage = make_storage(args.storage, out) if args.storage is not None else None
    if storage is None:
        db = Path(args.study_path) / "study.db" if Path(args.study_path).is_dir() else Path(args.study_path)
        if not db.is_file():
            raise ArchError(f"no study database at {db}", hint="give the --out folder of a search, or --storage URL")
        check_sqlite(db)
        storage = f"sqlite:///{db.resolve()}"
        name = args.study
        study_dir = db.parent  # trial artifacts (weights) are found relative to it, wherever it was moved
    else:
        name = args.study or args.study_path
        study_dir = Path(args.weights_from) if args.weights_from else None
    names = optuna.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            raise ArchError(f"the storage holds {len(names)} studies: {', '.join(names)}", hint="pick one with --study")
        name = names[0]
    if name not in names:
        from archdsl.errors import did_you_mean

        raise ArchError(f"no study '{name}' in the storage", hint=did_you_mean(name, names) or ", ".join(names))
    study = optuna.load_study(study_name=name, storage=storage)
    data = None
    if not args.no_test:
        from archdsl.search.data import load

        data = load(study.user_attrs.get("dataset", "mnist1d"), tuple(study.user_attrs.get("dataset_args", ())),
                    kwargs=study.user_attrs.get("dataset_kwargs"))
    summary = write_report(study, out, data, study_dir=study_dir)
    _print_front(summary, out)
    return 0


def add_search_commands(sub, common) -> None:
    """The search, worker and report subcommands of the `archdsl` parser."""
    c = sub.add_parser("search", help="multi-objective architecture search with Optuna (resumable)")
    common(c)
    c.add_argument("--search", help="which search section of the file (default: the last one)")
    c.add_argument("--trials", type=_count(1), help="finished trials the study should reach (default: the file's)")
    c.add_argument("--timeout", type=_above_zero, help="stop starting trials after this many seconds")
    c.add_argument("--jobs", type=_count(1), default=1, help="trials run in parallel by this process")
    c.add_argument("--storage", help="an Optuna storage URL, e.g. postgresql://user@host/db (default: OUT/study.db)")
    c.add_argument("--study", help="study name (default: the search section's name)")
    c.add_argument("--sampler", choices=["evolution", "nsga2", "tpe", "random", "grid"],
                   help="default: evolution (aging evolution over one choice at a time, duplicates avoided)")
    c.add_argument("--threads", type=_count(1), help="training threads per job (default: OMP_NUM_THREADS, else 1)")
    c.add_argument("--seed", type=int, default=None, help="sampler seed (default: the file's `seed =`, else 0)")
    c.add_argument("--out", default="runs/search", help="output folder: pareto.json, plots, .arch and modules")
    c.add_argument("--objective", action="append", default=[], metavar="ITEM",
                   help="replace the objectives, e.g. --objective 'maximize accuracy(epochs = 5)' (repeatable)")
    c.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="add a constraint, e.g. --constraint 'params < 20k' (repeatable)")
    c.add_argument("--quiet", action="store_true", help="no live progress display")
    c.add_argument("--devices", metavar="0,1,...", help="one worker process per device (GPU numbers, cuda:N or cpu) "
                                                        "on one study; --jobs N > devices shares them round robin")
    c.set_defaults(fn=cmd_search)

    c = sub.add_parser("worker", help="join a study started by `archdsl search` (from any machine)")
    c.add_argument("--storage", required=True, help="the study's Optuna storage URL, e.g. postgresql://user@host/db")
    c.add_argument("--study", required=True, help="the study name")
    c.add_argument("--out", default="runs/worker", help="where this worker writes weights and checkpoints")
    c.add_argument("--device", help="train on this device (cpu, cuda, cuda:N) instead of the search's")
    c.add_argument("--trials", type=_count(1), help="finished trials the study should reach (default: the search's)")
    c.add_argument("--quiet", action="store_true", help="no live progress display")
    c.set_defaults(fn=cmd_worker)

    c = sub.add_parser("report", help="write pareto.json, plots, .arch files and modules for a study")
    c.add_argument("study_path", help="a search's --out folder or its study.db (or a study name with --storage)")
    c.add_argument("--storage", help="an Optuna storage URL instead of a folder")
    c.add_argument("--study", help="study name, when the storage holds several")
    c.add_argument("--out", default="runs/report")
    c.add_argument("--no-test", action="store_true", help="skip measuring test accuracy of the Pareto members")
    c.add_argument("--weights-from", metavar="DIR",
                   help="with --storage: the search's --out folder, where the trials' weights are")
    c.set_defaults(fn=cmd_report)
