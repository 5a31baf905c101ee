"""One trial, in order: build -> static checks and constraints -> dedupe by IR hash -> latency of the deploy
graph -> zero-cost proxies -> training with intermediate reports -> metrics on the trial.

An infeasible architecture (a shape error, a violated constraint) is recorded with its reason and pruned
before any training; a trial that breaks (NaN loss, out of memory) is failed with its error.
"""
from __future__ import annotations

import io
import os
import pickle
import time
import warnings
from pathlib import Path

import optuna
import torch

import archdsl
from archdsl.errors import ArchError
from archdsl.frontend.elaborate import Ctx, Elaborator, Frame
from archdsl.frontend.choices import DefaultResolver
from archdsl.frontend.values import CONSTANTS
from archdsl.ir.cost import size_bytes, summary
from archdsl.ir.printer import ir_hash
from archdsl.ops.shapes import numel
from archdsl.search.checkpoint import Checkpoint
from archdsl.search.interrupt import Interrupts
from archdsl.search.latency import measure_paired
from archdsl.search.pruning import should_stop
from archdsl.search.proxies import PROXIES
from archdsl.search.recipe import Recipe, resolve_device
from archdsl.search.resolved import resolved_source
from archdsl.search.spec import constraint_names as _names
from archdsl.search.trial_choices import TrialResolver
from archdsl.search.train import TrialFailed, evaluate, train
from archdsl.search.workers import worker_name

METRIC_ATTRS = ("params", "macs", "size", "memory", "latency_ms", "latency_raw_ms", "latency_ratio", "accuracy",
                "synflow", "naswot", "jacob_cov", "grad_norm")



def activation_bytes(G, batch: int = 1, bytes_per_elem: int = 4) -> int:
    """Peak bytes of live activations in the graph's execution order (a static estimate of inference
    memory beyond the weights): a tensor lives from its producer until its last consumer runs."""
    from archdsl.ir.graph import order

    seq = order(G)
    pos = {n: i for i, n in enumerate(seq)}
    last_use = {n: max((pos[s] for s in G.successors(n)), default=pos[n]) for n in seq}
    live, peak = 0, 0
    sizes = {n: batch * bytes_per_elem * numel(G.nodes[n]["shape"]) for n in seq}
    dying: dict[int, list] = {}
    for n in seq:
        dying.setdefault(last_use[n], []).append(n)
    for i, n in enumerate(seq):
        live += sizes[n]
        peak = max(peak, live)
        for m in dying.get(i, []):
            live -= sizes[m]
    return peak


def static_metrics(G) -> dict:
    """What an architecture costs, known before any training or timing."""
    info = summary(G)
    return {"params": info["params"], "macs": info["macs"], "size": size_bytes(G), "memory": activation_bytes(G)}


def violated(program, spec, metrics: dict) -> str | None:
    """The first constraint the metrics break (constraints on metrics not measured yet are skipped)."""
    env = dict(metrics)
    if "latency_ms" in env:
        env["latency"] = env["latency_ms"]
    for c in spec.constraints:
        if not _names(c) <= set(env):
            continue  # not measured yet: checked again later
        ok = Elaborator(program, DefaultResolver()).eval(c, Frame(vars=dict(CONSTANTS, **env)), Ctx(refs={}))
        if not ok:
            shown = ", ".join(f"{k}={_fmt(env[k])}" for k in sorted(_names(c)))
            return f"constraint at {c.span} not met ({shown})"
    return None


class TrialRunner:
    """The objective function Optuna calls; holds what is shared between trials."""

    def __init__(self, program, spec, data, out: Path, fixed: dict, seed: int = 0, device: str | None = None,
                 on_epoch=None):
        self.program = program
        self.spec = spec
        self.data = data
        self.out = out
        self.fixed = fixed
        self.seed = seed
        self.model = spec.settings.get("model")
        self.interrupts = Interrupts()  # run_search installs its SIGINT handling here
        o = spec.objective("accuracy")
        self.recipe = spec.recipe
        # a GPU that is not there is an error now, before the study starts (not one failed trial per worker)
        self.device = resolve_device(self.recipe, o.span if o else None, device) if self._needs("accuracy") else "cpu"
        self.on_epoch = on_epoch  # the per-trial progress line: on_epoch(trial number, stats)

    # ----- the objective
    def __call__(self, trial: optuna.Trial):
        try:
            with self.interrupts.trial():
                return self._objective(trial)
        except (TrialFailed, RuntimeError, ValueError, ArchError) as e:
            # Optuna only logs why a trial failed: keep the reason with the trial (user attr "error")
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # not a failure of the architecture: retried next run
            raise

    def _objective(self, trial: optuna.Trial):
        t0 = time.perf_counter()
        resolver = TrialResolver(trial, self.fixed)
        try:
            G = archdsl.build(self.program, self.model, resolver=resolver)
            self.check_input(G)
        except ArchError as e:
            return self._infeasible(trial, e.format())
        h = ir_hash(G)
        metrics = static_metrics(G)
        trial.set_user_attr("ir_hash", h)
        trial.set_user_attr("worker", worker_name())
        trial.set_user_attr("arch", resolved_source(self.program, resolver, G))
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        reason = self._violated(metrics)
        if reason:
            return self._infeasible(trial, reason)
        earlier = self._earlier(trial.study, h)
        if earlier is not None and earlier.state == optuna.trial.TrialState.COMPLETE:
            for k in METRIC_ATTRS + ("weights", "val_curve"):
                if k in earlier.user_attrs:
                    trial.set_user_attr(k, earlier.user_attrs[k])
            trial.set_user_attr("duplicate_of", earlier.number)
            return earlier.values if len(earlier.values) > 1 else earlier.values[0]
        seed = (int(h[:8], 16) + self.seed) % (2**31)
        torch.manual_seed(seed)
        module = archdsl.compile(G, act_bits=self.recipe.act_bits)
        if self.recipe.act_bits != 8:
            trial.set_user_attr("act_bits", self.recipe.act_bits)  # the report rebuilds the module with it
        if self._needs("latency"):
            timing = self._latency(trial, G, module, earlier)
            for k, v in timing.items():
                trial.set_user_attr(k, v)
            metrics["latency_ms"] = timing["latency_ms"]
            reason = self._violated(metrics)
            if reason:
                return self._infeasible(trial, reason)
        for name, fn in PROXIES.items():
            if self._needs(name):
                x, y = self.data.head(64)
                metrics[name] = fn(module, x, y)
                trial.set_user_attr(name, metrics[name])
        if self._needs("accuracy"):
            metrics["accuracy"] = self._train(trial, module, seed, h)
            trial.set_user_attr("accuracy", metrics["accuracy"])
            reason = self._violated(metrics)
            if reason:
                return self._infeasible(trial, reason)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        values = [float(metrics["latency_ms" if o.metric == "latency" else o.metric]) for o in self.spec.objectives]
        return values if len(values) > 1 else values[0]

    # ----- steps
    def check_input(self, G):
        shape = tuple(G.nodes[G.graph["input"]]["shape"])
        if self._needs("accuracy") or any(self._needs(p) for p in PROXIES):
            if shape != self.data.input_shape:
                raise ArchError(f"the model's input is {list(shape)} but data set '{self.data.name}' has samples of "
                                f"shape {list(self.data.input_shape)}", G.nodes[G.graph["input"]]["span"],
                                hint=f"declare `input x{list(self.data.input_shape)}`")
            out = tuple(G.nodes[G.graph["output"]]["shape"])
            if out != (self.data.classes,):
                raise ArchError(f"the model outputs {list(out)} but data set '{self.data.name}' has "
                                f"{self.data.classes} classes", G.nodes[G.graph["output"]]["span"],
                                hint=f"end the model with linear({self.data.classes})")

    def _infeasible(self, trial, reason: str):
        trial.set_user_attr("infeasible", reason)
        raise optuna.TrialPruned(reason.splitlines()[0])

    def _needs(self, metric: str) -> bool:
        if self.spec.objective(metric) is not None:
            return True
        return any(metric in _names(c) or (metric == "latency" and "latency_ms" in _names(c))
                   for c in self.spec.constraints)

    def _violated(self, metrics: dict) -> str | None:
        return violated(self.program, self.spec, metrics)

    def _earlier(self, study, h: str):
        """A finished trial of the same architecture (complete first), if any."""
        best = None
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("ir_hash") != h:
                continue
            if t.state == optuna.trial.TrialState.COMPLETE:
                return t
            if best is None and "latency_ms" in t.user_attrs:
                best = t
        return best

    def _latency(self, trial, G, module, earlier) -> dict:
        """latency_ms (the objective: the ratio to the reference workload, in the study's reference ms),
        latency_raw_ms, latency_ratio; an earlier trial's when it timed the same architecture."""
        if earlier is not None and "latency_ms" in earlier.user_attrs:
            return {k: earlier.user_attrs[k] for k in LATENCY_ATTRS if k in earlier.user_attrs}
        args = latency_args(self.spec)
        with self.interrupts.live():
            timing = measure_paired(_deploy(G, module, args["act_bits"]), G.nodes[G.graph["input"]]["shape"],
                                    batch=args["batch"], device=args["device"], precision=args["precision"],
                                    runs=args["runs"], n_threads=args["threads"])
        unit = trial.study.user_attrs.get("latency_reference_ms") or timing["reference_ms"]
        return {"latency_ms": round(timing["ratio"] * unit, 4), "latency_raw_ms": round(timing["ms"], 4),
                "latency_ratio": round(timing["ratio"], 4)}

    def _train(self, trial, module, seed, h: str) -> float:
        multi = len(self.spec.objectives) > 1
        curve = []

        def report(epoch, acc):
            with self.interrupts.held():  # storage writes: a Ctrl-C waits for them
                curve.append(acc)
                trial.set_user_attr("val_curve", curve)
                if not multi:
                    trial.report(acc, epoch)
                    return trial.should_prune()
                return should_stop(trial, epoch, acc, self.spec)

        r = self.recipe
        checkpoint = Checkpoint(self.out, trial.number, _retried(trial),
                                key={"ir_hash": h, "seed": seed, "recipe": _recipe_key(r)})
        on_epoch = None
        if self.on_epoch is not None:
            def on_epoch(stats):
                with self.interrupts.held():  # the progress display's lock
                    self.on_epoch(trial.number, stats)
        try:
            with self.interrupts.live():
                history = train(module, self.data, seed=seed, report=report, recipe=r, device=self.device,
                                checkpoint=checkpoint, on_epoch=on_epoch)
        except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - needs a GPU
            raise TrialFailed(f"out of memory: {e}") from None
        if checkpoint.loaded_from is not None:
            trial.set_user_attr("resumed_from", {"checkpoint": checkpoint.loaded_from[0],
                                                 "epoch": checkpoint.loaded_from[1]})
        trial.set_user_attr("epochs_trained", len(history) - (checkpoint.loaded_from or ("", 0))[1])
        checkpoint.remove()
        if len(history) < r.epochs:
            trial.set_user_attr("stopped_at_epoch", len(history))
            raise optuna.TrialPruned(f"stopped at epoch {len(history)}: val accuracy {history[-1]:.3f}")
        self._save_weights(trial, module)
        return history[-1]

    def _save_weights(self, trial, module):
        path = self.out / "weights" / f"trial{trial.number}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        # written by Python, not by torch's writer: a full disk is an OSError (ENOSPC) that ends the search
        # with a clear message, not a RuntimeError that would fail this trial and every next one
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        trial.set_user_attr("weights", str(path.relative_to(self.out)))  # relative: the folder may move


LATENCY_ATTRS = ("latency_ms", "latency_raw_ms", "latency_ratio")


def latency_args(spec) -> dict:
    """The deployment the latency(...) objective declares: batch, device, precision, threads, runs; and the
    activation bits of int8 regions, from the training recipe (they choose the int8 kernels)."""
    o = spec.objective("latency")
    args = o.args if o else {}
    return {"batch": int(args.get("batch", 1)), "device": str(args.get("device", "cpu")),
            "precision": str(args.get("precision", "fp32")), "threads": int(args.get("threads", 1)),
            "runs": int(args.get("runs", 30)), "act_bits": spec.recipe.act_bits}


def _retried(trial) -> list[int]:
    """The numbers of the trials this one retries (Optuna's heartbeat re-queues a dead trial's parameters as a
    new trial with system attribute `retry_history`, oldest first)."""
    frozen = next((t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if t.number == trial.number), None)
    return list(frozen.system_attrs.get("retry_history", [])) if frozen is not None else []


def _recipe_key(r: Recipe) -> str:
    """What a checkpoint must have been trained with to be resumed (where it runs and with how many loader
    workers does not matter)."""
    from dataclasses import replace

    return repr(replace(r, device="", workers=0))


def _deploy(G, module, act_bits: int = 8):
    """What ships, for latency: the deploy graph, each region at its precision (int8 kernels included)."""
    try:
        with warnings.catch_warnings():  # the simulated-precision notice, once per trial, is noise here
            warnings.simplefilter("ignore", UserWarning)
            return archdsl.compile(G, mode="deploy", act_bits=act_bits)
    except ArchError:
        return module


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def held_out_accuracy(G, weights: str, data) -> float | None:
    """Accuracy on the held-out test split, from a trial's saved weights (measured once, for reports)."""
    if not weights or not Path(weights).exists():
        return None
    module = archdsl.compile(G)
    try:
        module.load_state_dict(torch.load(weights, weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as e:
        # not a state dict (weights_only refuses a crafted pickle), truncated, or another model's
        raise ArchError(f"cannot load the weights {weights}: {str(e).splitlines()[0][:300]}",
                        hint="the file is damaged or belongs to another architecture; rerun the trial's search") from None
    return evaluate(module, data.test)
