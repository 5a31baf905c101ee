"""Results of a study: pareto.json, a Pareto plot, a hypervolume-history plot, and for each Pareto trial a
plain .arch file (every choice substituted), its compiled PyTorch module and its trained weights.

Test accuracy is measured here, once, for the Pareto members only (the search saw the validation split).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna

import archdsl
from archdsl.errors import ArchError
from archdsl.ir.printer import ir_hash


def front(study) -> list:
    """The Pareto front (the best trial of one objective), each architecture (IR hash) once: a duplicate
    trial copies its values, and two workers may both have trained the same architecture."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs]
    if len(study.directions) == 1:
        if not done:
            return []
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        return [max(done, key=lambda t: (sign * t.value, -t.number))]
    seen, out = set(), []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        h = t.user_attrs.get("ir_hash")
        if "duplicate_of" in t.user_attrs or (h is not None and h in seen):
            continue
        seen.add(h)
        out.append(t)
    return sorted(out, key=lambda t: t.values[0])


def _losses(study, trials) -> np.ndarray:
    """Objective values as losses (maximised objectives negated), one row per trial."""
    signs = np.array([-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    return np.array([np.array(t.values) * signs for t in trials]).reshape(len(trials), len(signs))


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by `losses` (all minimised) up to `reference` (WFG algorithm, via Optuna)."""
    from optuna._hypervolume import compute_hypervolume

    pts = losses[np.all(losses < reference, axis=1)]
    return float(compute_hypervolume(pts, reference)) if len(pts) else 0.0


def hypervolume_history(study, reference: np.ndarray) -> list[float]:
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.number)
    out = []
    for i in range(1, len(done) + 1):
        out.append(hypervolume(_losses(study, done[:i]), reference))
    return out


def default_reference(study) -> np.ndarray:
    """Accuracy 0 and, for minimised objectives, 10% beyond the worst value seen."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    losses = _losses(study, done) if done else np.zeros((1, len(study.directions)))
    ref = []
    for j, d in enumerate(study.directions):
        ref.append(0.0 if d == optuna.study.StudyDirection.MAXIMIZE else float(losses[:, j].max()) * 1.1 + 1e-9)
    return np.array(ref)


def write_report(study, out: Path, data=None, program=None, study_dir: Path | None = None) -> dict:
    """Write everything a user needs after a search into `out`; returns the pareto.json content.
    `study_dir`: the folder the trials' artifacts (weights) are relative to and confined to; None: no
    weights are copied (and no test accuracy is measured)."""
    from archdsl.search.outdir import prepare, write_errors
    from archdsl.search.storage import file_lock

    out = prepare(out)
    with write_errors(), file_lock(out / ".report.lock"):  # two searches ending together on one --out
        return _write(study, out, data, study_dir)


def _write(study, out: Path, data, study_dir) -> dict:
    names = study.user_attrs.get("objectives") or [f"objective{i}" for i in range(len(study.directions))]
    members = []
    pareto_dir = out / "pareto"
    if pareto_dir.exists():
        shutil.rmtree(pareto_dir)
    pareto_dir.mkdir()
    for t in front(study):
        members.append(_member(t, names, pareto_dir, data, study_dir))
    _remeasure(study, members)
    ref = default_reference(study) if len(study.directions) > 1 else None
    trials = study.get_trials(deepcopy=False)
    summary = {
        "study": study.study_name,
        "objectives": names,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState},
        "pareto": members,
    }
    if ref is not None:
        history = hypervolume_history(study, ref)
        summary["hypervolume"] = history[-1] if history else 0.0
        summary["hypervolume_reference"] = ref.tolist()
        _plots(study, out, names, history)
        _time_plot(study, out, ref)
    tmp = out / ".pareto.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "pareto.json")  # never half a file, even when the disk fills up
    return summary


def _member(t, names, pareto_dir: Path, data, study_dir: Path | None) -> dict:
    from codegen.python_source import emit

    entry = {"number": t.number, "objectives": dict(zip(names, t.values)),
             **{k: t.user_attrs.get(k) for k in ("params", "macs", "size", "memory", "latency_ms", "accuracy", "ir_hash")},
             "params_choice": {k: v for k, v in t.params.items()}}
    source = t.user_attrs.get("arch")
    if not source:
        return entry
    arch = pareto_dir / f"trial{t.number}.arch"
    arch.write_text(f"# trial {t.number}: {', '.join(f'{n} = {v:.4g}' for n, v in zip(names, t.values))}\n" + source)
    entry["arch"] = str(arch)
    try:
        G = archdsl.build(archdsl.parse(arch))
    except ArchError as e:
        entry["error"] = e.format()
        return entry
    entry["exact_resolution"] = ir_hash(G) == t.user_attrs.get("ir_hash")
    if t.user_attrs.get("act_bits", 8) != 8:  # trained on 7-bit activations: emitted and evaluated so
        from archdsl.quant import ACTIVATION_BITS

        G.graph["act_levels"] = ACTIVATION_BITS[t.user_attrs["act_bits"]]
    module_py = pareto_dir / f"trial{t.number}.py"
    module_py.write_text(emit(G))
    entry["module"] = str(module_py)
    weights = artifact(study_dir, t.user_attrs.get("weights"), t.number)
    if weights is not None and weights.is_file():
        dst = pareto_dir / f"trial{t.number}.pt"
        shutil.copyfile(weights, dst)
        entry["weights"] = str(dst)
        if data is not None and entry["exact_resolution"]:
            from archdsl.search.trial import held_out_accuracy

            entry["test_accuracy"] = held_out_accuracy(G, str(dst), data)
    return entry


def artifact(study_dir: Path | None, recorded: str | None, number: int) -> Path | None:
    """The file a trial's attribute names, relative to the study folder and confined to it: the study
    database is data, and a path in it must not make the report read (or copy out) any other file. A path
    recorded absolute by an older archdsl is looked up by its name under the study folder's weights/."""
    if study_dir is None or not recorded:
        return None
    root = Path(study_dir).resolve()
    rel = Path(recorded)
    if rel.is_absolute():
        rel = Path("weights") / rel.name
    path = (root / rel).resolve()
    if not path.is_relative_to(root / "weights"):
        raise ArchError(f"trial {number}'s weights path {recorded!r} leads outside the study folder {root}/weights",
                        hint="the study database was edited or comes from elsewhere; refusing to read that file")
    return path


_UNITS = {"accuracy": "validation accuracy", "latency": "latency (ms, deploy graph)", "params": "parameters",
          "macs": "MACs", "size": "model size (bytes)", "memory": "peak activation bytes"}


def _axis(name: str) -> str:
    """'minimize latency' -> 'latency (ms, deploy graph), lower is better'."""
    direction, _, metric = name.partition(" ")
    label = _UNITS.get(metric, metric or name)
    return f"{label}, {'higher' if direction == 'maximize' else 'lower'} is better" if metric else name


def _plots(study, out: Path, names, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = {t.number for t in study.best_trials}
    if done:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        xs = np.array([t.values[1] for t in done])
        ys = np.array([t.values[0] for t in done])
        on = np.array([t.number in best for t in done])
        ax.scatter(xs[~on], ys[~on], s=18, c="#9aa5b1", label="trials")
        order = np.argsort(xs[on])
        ax.plot(xs[on][order], ys[on][order], "o-", c="#d1495b", label="Pareto front")
        ax.set_xlabel(_axis(names[1]))
        ax.set_ylabel(_axis(names[0]))
        ax.set_title(f"{study.study_name}: {len(done)} complete trials")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(history) + 1), history, c="#00798c")
    ax.set_xlabel("complete trials")
    ax.set_ylabel("hypervolume")
    ax.set_title("hypervolume history")
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png", dpi=120)
    plt.close(fig)


def _time_plot(study, out: Path, ref) -> None:
    """hypervolume_time.png: the hypervolume of the trials completed by each moment of the search."""
    from archdsl.search.hvtime import curve, plot

    times, hvs = curve(study, ref)
    if len(times):
        plot({study.study_name: [(times, hvs)]}, out / "hypervolume_time.png", horizon=float(times[-1]) * 1.02,
             title=f"{study.study_name}: hypervolume against wall-clock time")


def _remeasure(study, members: list) -> None:
    """Time the Pareto members again, together and round-robin with the reference workload, so the latencies
    reported were taken in one window (during the search each was timed at its own moment):
    latency_final_ms (in the study's reference ms, as the objective), latency_final_raw_ms."""
    unit = study.user_attrs.get("latency_reference_ms")
    args = study.user_attrs.get("latency_args")
    if unit is None or args is None:
        return
    from archdsl.search.latency import measure_together
    from archdsl.search.trial import _deploy

    modules = {}
    for m in members:
        if m.get("exact_resolution"):
            G = archdsl.build(archdsl.parse(m["arch"]))
            modules[m["number"]] = (_deploy(G, archdsl.compile(G), args.get("act_bits", 8)),
                                    G.nodes[G.graph["input"]]["shape"])
    if not modules:
        return
    timing = measure_together(modules, batch=args["batch"], device=args["device"], precision=args["precision"],
                              n_threads=args["threads"], runs=args["runs"])
    for m in members:
        if m["number"] in timing:
            m["latency_final_ms"] = round(timing[m["number"]]["ratio"] * unit, 4)
            m["latency_final_raw_ms"] = round(timing[m["number"]]["ms"], 4)
