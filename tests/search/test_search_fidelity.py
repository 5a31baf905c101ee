"""The rung pruner's decisions on hand-built trial lists; latency paired with the reference workload; threads."""
from __future__ import annotations

import pytest
import torch

from archdsl.errors import ArchError
from archdsl.search.latency import SETTLE, measure_together, threads
from archdsl.search.pruning import MIN_AT_RUNG, Peer, decide, rungs
from archdsl.search.study import search_threads


def test_rungs_follow_successive_halving():
    assert rungs(25) == [2, 7]   # after 25/9 ~ 3 and 25/3 ~ 8 epochs (0-based 2 and 7)
    assert rungs(10) == [1, 2]   # 10/9 -> 2 epochs at least; 10/3 -> 3
    assert rungs(3) == [1]
    assert rungs(2) == []        # the last epoch is never a rung


def curve(acc_at_rung: float, epoch: int = 2) -> list:
    return [0.1] * epoch + [acc_at_rung]


def test_a_faster_complete_trial_that_was_more_accurate_stops_it():
    faster = Peer(4, True, curve(0.90), (0.05,))
    assert "trial 4" in decide(2, 0.80, (0.06,), [faster])
    assert decide(2, 0.91, (0.06,), [faster]) is None                         # more accurate than it
    assert decide(2, 0.80, (0.06,), [Peer(4, True, curve(0.90), (0.07,))]) is None   # it is slower
    assert decide(2, 0.80, (0.06,), [Peer(4, False, curve(0.90), (0.05,))]) is None  # it was stopped itself
    assert decide(2, 0.80, (0.06,), [Peer(4, True, [0.9], (0.05,))]) is None  # it never reached this epoch


def test_only_the_best_third_by_nondominated_rank_goes_on():
    # eight peers as slow as the trial itself: the ranking is by accuracy alone; 9 at the rung, the best 3 go on
    peers = [Peer(i, False, curve(a), (1.0,)) for i, a in enumerate([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55])]
    assert decide(2, 0.82, (1.0,), peers) is None           # third best: 2 ahead
    assert "3 of 9" in decide(2, 0.78, (1.0,), peers)      # fourth: 3 ahead
    # the fastest at the rung is on the first front however inaccurate
    assert decide(2, 0.30, (0.5,), peers) is None
    # fewer trials at the rung than MIN_AT_RUNG: nobody is ranked out
    assert decide(2, 0.30, (1.0,), peers[:MIN_AT_RUNG - 2]) is None


class Clock:
    """A deterministic stand-in for time.perf_counter: the fake networks advance it by their cost."""

    def __init__(self):
        self.now, self.slowdown = 0.0, 1.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import archdsl.search.latency as latency

    c = Clock()
    monkeypatch.setattr(latency, "time", c)
    return c


class Busy(torch.nn.Module):
    """A network whose forward costs `ms` times the machine's slowdown at that moment."""

    def __init__(self, clock: Clock, ms: float, slow_from: int | None = None):
        super().__init__()
        self.clock, self.ms, self.calls, self.slow_from = clock, ms, 0, slow_from

    def forward(self, x):
        self.calls += 1
        if self.slow_from is not None and self.calls >= self.slow_from:
            self.clock.slowdown = 3.0 + self.calls  # load arrives, and grows, during the measurement
        self.clock.now += self.ms * self.clock.slowdown / 1e3
        return x


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_a_slowdown_of_workload_and_reference_alike_leaves_the_ratio(clock, factor):
    clock.slowdown = factor
    r = measure_together({"net": (Busy(clock, 0.2), (1, 4))}, runs=9, warmup=1, reference=Busy(clock, 0.05))["net"]
    assert r["ratio"] == pytest.approx(4.0)
    assert r["ms"] == pytest.approx(0.2 * factor)  # the raw time does move
    assert r["reference_ms"] == pytest.approx(0.05 * factor)


def test_load_arriving_mid_measurement_cancels_in_the_ratio(clock):
    net = Busy(clock, 0.2, slow_from=4)
    r = measure_together({"net": (net, (1, 4))}, runs=10, warmup=1, reference=Busy(clock, 0.1))["net"]
    assert r["ratio"] == pytest.approx(2.0, rel=0.2)  # each network call sets the load the next reference sees
    assert r["ms"] > 0.2 * 3  # unpaired, the median would have tripled


def test_several_networks_are_timed_round_robin(clock):
    a, b = Busy(clock, 0.1), Busy(clock, 0.3)
    r = measure_together({"a": (a, (1, 4)), "b": (b, (1, 4))}, runs=7, warmup=1, reference=Busy(clock, 0.1))
    assert a.calls == b.calls == 8 * (1 + SETTLE)
    assert r["a"]["ratio"] == pytest.approx(1.0) and r["b"]["ratio"] == pytest.approx(3.0)


def test_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert search_threads(None) == 1
    assert search_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert search_threads(None) == 2
    with pytest.raises(ArchError, match="1 thread at least"):
        search_threads(0)
    before = torch.get_num_threads()
    with threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
