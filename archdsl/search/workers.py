"""Many worker processes on one study: `archdsl search --devices 0,1,...` starts one per device on this machine;
`archdsl worker --storage URL --study NAME` joins a study from any machine.

A study records how it was launched (user attribute `launch`: the .arch source and the sources it imports,
the search section, --set / --objective / --constraint, the sampler and the trial target), so a worker needs
only the storage URL and the study name: it rebuilds the same program from the stored text. Data paths
(`npz(...)`, `images(...)`) are stored resolved and must exist at the same path on the worker's machine (a
shared file system or the same mount). Workers coordinate through the storage alone (Optuna's RDB storage):
each asks for the next trial, dedupes by IR hash against every worker's trials, and stops when the study holds
the target number of finished trials.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from archdsl.errors import ArchError


def launch_record(program, args) -> dict:
    """What a worker needs to run the same search (stored with the study when it is created)."""
    sources = {program.file: program.source}
    for path in program.imports:
        sources[path] = Path(path).read_text()
    return {"file": program.file, "sources": sources, "search": args.search, "set": list(args.set),
            "objective": list(args.objective), "constraint": list(args.constraint), "sampler": args.sampler,
            "trials": args.trials}


def program_from(launch: dict, out: Path):
    """The launched program: the .arch file itself when it is here unchanged, else the stored texts written
    under OUT/source/ (keeping their relative layout, so imports resolve)."""
    import archdsl

    main, sources = launch["file"], launch["sources"]
    if all(Path(p).is_file() and Path(p).read_text() == text for p, text in sources.items()):
        return archdsl.parse(Path(main))
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:12]
    root = out / "source" / digest
    for path, text in sources.items():
        dest = root / Path(path).resolve().relative_to("/") if Path(path).is_absolute() else root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    where = root / Path(main).resolve().relative_to("/") if Path(main).is_absolute() else root / main
    return archdsl.parse(where)


def device_list(text: str) -> list[str]:
    """--devices 0,1,cpu -> ["cuda:0", "cuda:1", "cpu"]."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if item.isdigit():
            out.append(f"cuda:{item}")
        elif item == "cpu" or (item.startswith("cuda:") and item[5:].isdigit()):
            out.append(item)
        else:
            raise ArchError(f"--devices {text!r}: '{item}' is not a GPU number, cuda:N or cpu",
                            hint="e.g. --devices 0,1,2,3 (one worker process per GPU)")
    if not out:
        raise ArchError("--devices needs at least one device, e.g. --devices 0,1")
    return out


def run_workers(storage: str, study: str, out: Path, devices: list[str], jobs: int) -> None:
    """Start max(jobs, len(devices)) `archdsl worker` processes, devices assigned round robin, and wait for
    them; a worker that fails is reported after the others finish."""
    n = max(jobs, len(devices))
    procs = []
    try:
        for i in range(n):
            argv = [sys.executable, "-m", "archdsl.cli", "worker", "--storage", storage, "--study", study,
                    "--out", str(out), "--device", devices[i % len(devices)], "--quiet"]
            env = {**os.environ, "ARCHDSL_WORKER_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
            procs.append(subprocess.Popen(argv, env=env))
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        raise ArchError(f"worker(s) {', '.join(f'{i} (status {c})' for i, c in bad)} of {n} failed; see their "
                        f"messages above", hint="finished trials are kept: rerun the same command to resume")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
