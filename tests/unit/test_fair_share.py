"""The fair-share order (llmos_jobs.services.fair_share) against references built by
hand: the Virtual Token Counter's bounded service gap, weighted shares, VTC's lift of a
returning tenant, priority with aging, deadlines and limits (the pacer of batches:
tests/e2e/test_quotas.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from llmos_jobs.db.dispatch import HeldGroup
from llmos_jobs.services.fair_share import VirtualTokenCounter, effective_priority, queue_bound

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def group(tenant: str, *, priority: int = 5, count: int = 1000, batch: bool = False,
          waited_s: float = 0.0, deadline: datetime | None = None) -> HeldGroup:
    return HeldGroup(tenant=tenant, batch=batch, priority=priority,
                     oldest=NOW - timedelta(seconds=waited_s), deadline=deadline, count=count)


def one(vtc: VirtualTokenCounter, groups: list[HeldGroup], **kwargs: object) -> HeldGroup:
    [(chosen, n, _)] = vtc.choose(groups, room=1, now=NOW, aging_s=60.0,
                                  weights=kwargs.pop("weights", {}), **kwargs)  # type: ignore[arg-type]
    assert n == 1
    return chosen


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.tuples(st.integers(1, 500), st.integers(1, 500)), min_size=20,
                      max_size=200),
       weights=st.tuples(st.sampled_from([1.0, 2.0, 3.0]), st.sampled_from([1.0, 2.0])))
def test_the_service_gap_of_two_backlogged_tenants_stays_bounded(
        costs: list[tuple[int, int]], weights: tuple[float, float]) -> None:
    """Each release is settled with its actual cost (the tenant's next job in
    ``costs``); at every step the weighted service of A and B, summed here
    independently of the counters, differs by at most one job's cost per weight."""
    vtc = VirtualTokenCounter()
    weight = {"a": weights[0], "b": weights[1]}
    groups = [group("a"), group("b")]
    vtc.activate({"a", "b"}, {("a", False), ("b", False)})
    served = {"a": 0.0, "b": 0.0}
    taken = {"a": 0, "b": 0}
    bound = max(c for pair in costs for c in pair) / min(weights)
    for _ in range(len(costs)):
        [(chosen, _, charged)] = vtc.choose(groups, room=1, now=NOW, aging_s=60.0,
                                            weights=weight)
        tenant = chosen.tenant
        actual = float(costs[taken[tenant]][0 if tenant == "a" else 1])
        taken[tenant] += 1
        vtc.settle(tenant, False, actual=actual, charged=charged, weight=weight[tenant])
        served[tenant] += actual / weight[tenant]
        assert abs(served["a"] - served["b"]) <= bound + 1e-6, (served, bound)


def test_weights_two_to_one_give_two_releases_to_one_of_equal_cost() -> None:
    vtc = VirtualTokenCounter()
    vtc.activate({"a", "b"}, {("a", False), ("b", False)})
    picks = vtc.choose([group("a"), group("b")], room=300, now=NOW, aging_s=60.0,
                       weights={"a": 2.0, "b": 1.0})
    counts = {g.tenant: n for g, n, _ in picks}
    # Reference: equal costs, weights 2:1 over 300 releases.
    assert counts == {"a": 200, "b": 100}


def test_a_returning_tenant_is_lifted_to_the_active_ones_and_banks_no_credit() -> None:
    vtc = VirtualTokenCounter()
    vtc.activate({"a"}, {("a", False)})
    vtc.choose([group("a")], room=100, now=NOW, aging_s=60.0, weights={})
    assert vtc.service["a"] == 100.0
    vtc.activate({"a", "b"}, {("a", False), ("b", False)})
    assert vtc.service["b"] == 100.0  # lifted, not 0: b does not get the next 100 alone
    picks = vtc.choose([group("a"), group("b")], room=10, now=NOW, aging_s=60.0, weights={})
    assert {g.tenant: n for g, n, _ in picks} == {"a": 5, "b": 5}


def test_a_tenants_batch_and_interactive_jobs_share_its_turns() -> None:
    vtc = VirtualTokenCounter()
    groups = [group("a", batch=True), group("a"), group("b")]
    vtc.activate({"a", "b"}, {("a", True), ("a", False), ("b", False)})
    picks = {(g.tenant, g.batch): n for g, n, _ in
             vtc.choose(groups, room=40, now=NOW, aging_s=60.0, weights={})}
    assert picks == {("a", True): 10, ("a", False): 10, ("b", False): 20}


def test_priority_wins_across_levels_until_aging_lifts_the_lower_one() -> None:
    vtc = VirtualTokenCounter()
    fresh_low = group("low", priority=9, waited_s=30)
    high = group("high", priority=1)
    assert one(vtc, [fresh_low, high]).tenant == "high"
    aged_low = group("low", priority=9, waited_s=60 * 9)
    assert effective_priority(aged_low, now=NOW, aging_s=60.0) == 0
    assert one(vtc, [aged_low, high]).tenant == "low"


def test_aging_never_parts_two_tenants_of_one_priority() -> None:
    """A's backlog held for an hour and B's fresh jobs share the level by their
    counters: aging lifts the level, not the older tenant."""
    vtc = VirtualTokenCounter()
    vtc.activate({"a", "b"}, {("a", False), ("b", False)})
    picks = vtc.choose([group("a", waited_s=3600), group("b")], room=10, now=NOW,
                       aging_s=60.0, weights={})
    assert {g.tenant: n for g, n, _ in picks} == {"a": 5, "b": 5}


def test_the_nearest_deadline_goes_first_whatever_the_counters() -> None:
    vtc = VirtualTokenCounter(service={"near": 1e9, "far": 0.0, "none": 0.0})
    groups = [group("none"), group("far", deadline=NOW + timedelta(hours=1)),
              group("near", deadline=NOW + timedelta(minutes=1))]
    assert one(vtc, groups).tenant == "near"
    assert one(vtc, groups[:2]).tenant == "far"


def test_a_tenant_at_its_running_limit_is_skipped_not_refused() -> None:
    vtc = VirtualTokenCounter()
    picks = vtc.choose([group("a"), group("b")], room=10, now=NOW, aging_s=60.0, weights={},
                       headroom={"a": 2})
    assert {g.tenant: n for g, n, _ in picks} == {"a": 2, "b": 8}


def test_the_bound_follows_the_live_slots() -> None:
    assert queue_bound(slots=0, depth=2.0, idle_bound=4) == 4
    assert queue_bound(slots=8, depth=2.0, idle_bound=4) == 16
    assert queue_bound(slots=3, depth=1.5, idle_bound=4) == 5
