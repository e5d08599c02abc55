"""The scaling formula against hand-computed cases and its promised properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmos_jobs.scaling import Dominant, ModelDemand, ScalePolicy, workers_needed

POLICY = ScalePolicy(target_s=60.0, window_s=300.0, default_jobs_per_worker_s=0.1)


def test_nothing_waiting_or_running_needs_no_worker() -> None:
    need = workers_needed(ModelDemand(model="m", queued=0, running=0, live_workers=3),
                          POLICY)
    assert (need.workers, need.dominant) == (0, Dominant.idle)


def test_backlog_by_hand() -> None:
    # capacity(60) = 2 slots + 0.5 jobs/s * 60 s = 32 jobs per worker; 3 running + 90
    # queued = 93 jobs -> 93 / 32 = 2.9 -> 3 workers.
    demand = ModelDemand(model="m", queued=90, running=3, concurrency=2,
                         jobs_per_worker_s=0.5)
    need = workers_needed(demand, POLICY)
    assert (need.workers, need.dominant, need.measured) == (3, Dominant.backlog, True)
    assert need.running_term == 2 and need.deadline_term == 0


def test_running_jobs_keep_their_workers() -> None:
    # 7 running on workers of concurrency 2: 4 workers, although nothing waits.
    need = workers_needed(ModelDemand(model="m", queued=0, running=7, concurrency=2,
                                      jobs_per_worker_s=5.0), POLICY)
    assert (need.workers, need.dominant) == (4, Dominant.running)


def test_deadlines_by_hand() -> None:
    # Default rate 0.1 jobs/s, concurrency 1, 1 running. Deadlines 0 s (past), 10 s, 10 s:
    # k=1 at 0 s: (1+1)/(1+0) = 2; k=2 at 10 s: 3/2 = 1.5 -> 2; k=3 at 10 s: 4/2 = 2.
    # Backlog of 5: (1+5)/(1+6) -> 1. Deadline term 2 decides.
    demand = ModelDemand(model="m", queued=5, running=1, deadlines_s=(10.0, -3.0, 10.0))
    need = workers_needed(demand, POLICY)
    assert (need.deadline_term, need.backlog_term, need.running_term) == (2, 1, 1)
    assert (need.workers, need.dominant, need.measured) == (2, Dominant.deadline, False)
    assert "deadline" in need.why(demand, POLICY) and "default" in need.why(demand, POLICY)


def test_a_rate_of_zero_is_no_measurement() -> None:
    need = workers_needed(ModelDemand(model="m", queued=1, running=0,
                                      jobs_per_worker_s=0.0), POLICY)
    assert need.jobs_per_worker_s == POLICY.default_jobs_per_worker_s
    assert not need.measured


def test_a_wrong_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        ScalePolicy(window_s=0)


counts = st.integers(min_value=0, max_value=500)
rates = st.one_of(st.none(), st.floats(min_value=1e-4, max_value=1e4))
slots = st.integers(min_value=1, max_value=64)


@st.composite
def demands(draw: st.DrawFn) -> ModelDemand:
    queued = draw(counts)
    deadlines = draw(st.lists(st.floats(min_value=-100, max_value=POLICY.target_s),
                              max_size=min(queued, 20)))
    return ModelDemand(model="m", queued=queued, running=draw(counts),
                       deadlines_s=tuple(deadlines), concurrency=draw(slots),
                       jobs_per_worker_s=draw(rates))


@given(demands(), st.integers(min_value=1, max_value=200))
def test_monotone_in_queue_depth(demand: ModelDemand, more: int) -> None:
    deeper = ModelDemand(model="m", queued=demand.queued + more, running=demand.running,
                         deadlines_s=demand.deadlines_s, concurrency=demand.concurrency,
                         jobs_per_worker_s=demand.jobs_per_worker_s)
    assert workers_needed(deeper, POLICY).workers >= workers_needed(demand, POLICY).workers


@given(demands())
def test_never_below_what_a_deadline_needs(demand: ModelDemand) -> None:
    """Checked by simulation of the capacity model, not by the formula's own term: with
    n workers, by the k-th earliest deadline n * (c + mu * d_k) - running >= k."""
    need = workers_needed(demand, POLICY)
    n, mu, c = need.workers, need.jobs_per_worker_s, demand.concurrency
    for k, d in enumerate(sorted(max(0.0, d) for d in demand.deadlines_s), start=1):
        assert n * (c + mu * d) - demand.running >= k - 1e-6
    if demand.queued:
        assert n * (c + mu * POLICY.target_s) - demand.running >= demand.queued - 1e-6
    assert n * c >= demand.running


@given(demands())
def test_zero_only_when_nothing_waits_or_runs(demand: ModelDemand) -> None:
    need = workers_needed(demand, POLICY)
    assert (need.workers == 0) == (demand.queued + demand.running == 0)


@given(demands(), st.floats(min_value=1.0, max_value=100.0))
def test_a_faster_worker_never_needs_more(demand: ModelDemand, factor: float) -> None:
    measured = demand.jobs_per_worker_s or POLICY.default_jobs_per_worker_s
    faster = ModelDemand(model="m", queued=demand.queued, running=demand.running,
                         deadlines_s=demand.deadlines_s, concurrency=demand.concurrency,
                         jobs_per_worker_s=measured * factor)
    assert workers_needed(faster, POLICY).workers <= workers_needed(demand, POLICY).workers


@given(demands())
def test_the_answer_is_the_largest_term(demand: ModelDemand) -> None:
    need = workers_needed(demand, POLICY)
    terms = {Dominant.running: need.running_term, Dominant.backlog: need.backlog_term,
             Dominant.deadline: need.deadline_term}
    assert need.workers == max(terms.values())
    if need.workers:
        assert terms[need.dominant] == need.workers
    assert need.running_term == math.ceil(demand.running / demand.concurrency)
