"""The inter-program scheduler: SJF admission with aging, gang priorities, deadline urgency, and a
starvation bound checked on simulated workloads."""
from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_backend import scheduler as scheduler_module
from scheduler_backend.scheduler import Scheduler, SchedulingPolicy


def test_sjf_admits_by_predicted_remaining_work() -> None:
    sched = Scheduler(max_running=2)
    for pid, work in [("a", 50), ("b", 10), ("c", 40), ("d", 20), ("e", 30)]:
        sched.add(pid, 0.0, work)
    assert sched.schedule(0.0).admit == ["b", "d"]
    assert sched.schedule(0.0).admit == []  # full
    sched.remove("b")
    sched.remove("d")
    assert sched.schedule(0.0).admit == ["e", "c"]


def test_changing_max_running_never_evicts_and_raising_it_admits_at_the_next_schedule() -> None:
    sched = Scheduler(max_running=3)
    for pid, work in [("a", 10), ("b", 20), ("c", 30), ("d", 40), ("e", 50)]:
        sched.add(pid, 0.0, work)
    assert sched.schedule(0.0).admit == ["a", "b", "c"]
    sched.set_max_running(1)
    assert sched.running == 3, "running programs keep running"
    sched.remove("a")
    sched.remove("b")
    assert sched.schedule(0.0).admit == [], "one still runs: at the new limit"
    sched.set_max_running(3)
    assert sched.running == 1
    assert sched.schedule(0.0).admit == ["d", "e"]
    with pytest.raises(ValueError, match="^max_running:"):
        sched.set_max_running(0)


def test_update_of_a_waiting_program_reorders_it() -> None:
    sched = Scheduler(max_running=1)
    sched.add("a", 0.0, 10)
    sched.add("b", 0.0, 20)
    sched.update("a", 30)
    assert sched.schedule(0.0).admit == ["b"]


def test_gang_priorities_one_per_running_program_ordered_by_work() -> None:
    sched = Scheduler(max_running=4)
    works = {"a": 400.0, "b": 100.0, "c": 300.0, "d": 200.0, "e": 50.0}
    for pid in ["a", "b", "c", "d"]:
        sched.add(pid, 0.0, works[pid])
    decisions = sched.schedule(0.0)
    assert set(decisions.admit) == {"a", "b", "c", "d"}
    priorities = {pid: sched.priority(pid) for pid in decisions.admit}
    assert all(isinstance(p, int) for p in priorities.values())
    prios = [priorities[pid] for pid in sorted(priorities, key=works.get)]
    assert all(x < y for x, y in zip(prios, prios[1:])), prios
    # A new arrival does not renumber the running programs.
    sched.add("e", 0.0, works["e"])
    assert sched.schedule(0.0).admit == []
    assert {pid: sched.priority(pid) for pid in priorities} == priorities
    # Less predicted work after a step moves a running program earlier.
    sched.update("a", 10.0)
    sched.schedule(0.0)
    assert sched.priority("a") < priorities["b"]


def test_aging_lets_an_old_long_program_pass_a_new_short_one() -> None:
    sched = Scheduler(max_running=1, aging_per_s=50.0)
    sched.add("long", 0.0, 1000.0)
    sched.add("short", 30.0, 10.0)  # aged key 10 + 50 * 30 = 1510 > 1000
    assert sched.schedule(30.0).admit == ["long"]
    fresh = Scheduler(max_running=1, aging_per_s=50.0)
    fresh.add("long", 0.0, 1000.0)
    fresh.add("short", 10.0, 10.0)  # 10 + 500 < 1000
    assert fresh.schedule(10.0).admit == ["short"]


def test_deadline_urgent_program_goes_first() -> None:
    sched = Scheduler(max_running=1, deadline_margin_s=2.0)
    sched.add("small", 0.0, 10.0)
    sched.add("due", 0.0, 5000.0, deadline=10.0)
    assert sched.schedule(7.0).admit == ["small"]  # deadline 3 s away: not urgent yet
    sched.remove("small")
    sched.add("small2", 7.5, 1.0)
    assert sched.schedule(8.0).admit == ["due"]  # within the 2 s margin: ahead of any work size


def test_urgent_programs_run_earliest_deadline_first_and_before_all_others() -> None:
    sched = Scheduler(max_running=3, deadline_margin_s=1.0)
    sched.add("late", 0.0, 800.0, deadline=5.5)
    sched.add("soon", 0.0, 900.0, deadline=5.2)
    sched.add("small", 0.0, 1.0)
    sched.add("later", 0.0, 1.0)
    assert sched.schedule(0.0).admit == ["small", "later", "late"]
    sched.schedule(5.0)  # both deadlines within the margin now
    assert sched.priority("late") < sched.priority("small") and sched.priority("late") < sched.priority("later")
    sched.remove("small")
    assert sched.schedule(5.0).admit == ["soon"]
    assert sched.priority("soon") < sched.priority("late")  # earlier deadline


def test_predicted_remaining_time_makes_a_program_urgent_early() -> None:
    with_rate = Scheduler(max_running=1, deadline_margin_s=2.0, work_per_s=10.0)
    without = Scheduler(max_running=1, deadline_margin_s=2.0)
    for sched in (with_rate, without):
        sched.add("small", 0.0, 5.0)
        sched.add("big", 0.0, 1000.0, deadline=100.0)  # 1000 units at 10/s need 100 s
    assert with_rate.schedule(0.0).admit == ["big"]
    assert without.schedule(0.0).admit == ["small"]


def test_a_measured_rate_makes_a_program_urgent_once_its_remaining_work_no_longer_fits() -> None:
    sched = Scheduler(max_running=1, deadline_margin_s=0.5)
    sched.add("blocker", 0.0, 1.0)
    assert sched.schedule(0.0).admit == ["blocker"]
    sched.add("due", 0.0, 300.0, deadline=40.0)
    sched.add("small", 0.0, 5.0)
    sched.set_work_rate(10.0)  # 300 units at 10/s need 30 s: urgent from 40 - 0.5 - 30 = 9.5 s
    sched.update("due", 300.0)
    sched.schedule(9.0)
    assert sched.priority("due") >= 0, "still fits at 9 s"
    sched.schedule(9.6)
    assert sched.priority("due") < 0 <= sched.priority("small"), "urgent at 9.5 s, not 2 s before its deadline"
    sched.remove("blocker")
    assert sched.schedule(9.6).admit == ["due"]
    sched.set_work_rate(None)
    with pytest.raises(ValueError, match="^work_per_s:"):
        sched.set_work_rate(0.0)


def test_ordering_holds_at_any_uptime() -> None:
    """Priorities count from the earliest live arrival: a clock at 1e9 s (31 years) orders urgent and
    normal programs as it does at 0, where an origin fixed at the first arrival saturated both."""
    sched = Scheduler(max_running=4, deadline_margin_s=1.0)
    sched.add("first", 0.0, 10.0, deadline=5.0)
    sched.schedule(0.0)
    sched.remove("first")
    t = 1e9
    sched.add("late", t, 900.0, deadline=t + 20.0)
    sched.add("soon", t, 900.0, deadline=t + 10.0)
    sched.add("big", t, 500.0)
    sched.add("small", t, 50.0)
    assert sched.schedule(t).admit == ["small", "big", "late", "soon"]
    assert 0 <= sched.priority("small") < sched.priority("big") < 2**31 - 1
    sched.schedule(t + 19.5)  # both deadlines within the margin
    assert -(2**30) <= sched.priority("soon") < sched.priority("late") < 0


def test_a_server_that_never_empties_keeps_order_after_any_uptime() -> None:
    """Overlapping programs for 1e9 s, never an empty scheduler: the origin moves up with the
    earliest live arrival, so the newest programs still get distinct, ordered priorities."""
    sched = Scheduler(max_running=8, deadline_margin_s=1.0)
    step = 1e7  # aging 50 * 1e7 = 5e8 per step: int32 priorities would saturate within 5 steps
    prev = None
    for i in range(100):
        t = i * step
        sched.add(f"p{i}", t, 100.0, deadline=t + 30.0)
        sched.schedule(t)
        if prev is not None:
            sched.remove(prev)
        prev = f"p{i}"
    t = 100 * step
    sched.add("short", t, 10.0, deadline=t + 50.0)
    sched.add("long", t, 1000.0, deadline=t + 40.0)
    sched.schedule(t)
    assert sched.priority("p99") < sched.priority("short") < sched.priority("long") < 2**31 - 1
    sched.schedule(t + 49.5)  # all three within the margin of their deadlines now
    assert -(2**30) <= sched.priority("p99") < sched.priority("long") < sched.priority("short") < 0


def test_fcfs_ignores_work() -> None:
    sched = Scheduler(max_running=2, policy=SchedulingPolicy.FCFS)
    for i, work in enumerate([500.0, 1.0, 300.0]):
        sched.add(f"p{i}", float(i), work)
    decisions = sched.schedule(3.0)
    assert decisions.admit == ["p0", "p1"]
    assert sched.priority("p0") < sched.priority("p1")
    assert Scheduler(policy="fcfs").policy is SchedulingPolicy.FCFS


def test_errors() -> None:
    sched = Scheduler()
    sched.add("a", 0.0, 1.0)
    with pytest.raises(ValueError, match="^pid:"):
        sched.add("a", 0.0, 1.0)
    with pytest.raises(ValueError, match="^predicted_work:"):
        sched.update("a", float("nan"))
    with pytest.raises(KeyError, match="pid"):
        sched.update("zz", 1.0)
    with pytest.raises(KeyError, match="pid"):
        sched.remove("zz")
    with pytest.raises(ValueError, match="^policy:"):
        Scheduler(policy="lottery")
    with pytest.raises(ValueError, match="^max_running:"):
        Scheduler(max_running=0)
    with pytest.raises(ValueError, match="^aging_per_s:.*starve"):
        Scheduler(aging_per_s=0.0)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "update", "remove", "schedule"]), st.integers(0, 5), st.integers(0, 100)),
        max_size=120,
    ),
    max_running=st.integers(1, 3),
)
def test_heap_with_lazy_deletion_matches_a_sorted_model(ops: list, max_running: int) -> None:
    """Every admission takes the waiting program with the smallest aged key, as sorting would,
    however many stale heap entries updates and removals left behind (no compaction slack, so
    heaps are rebuilt often)."""
    with mock.patch.object(scheduler_module, "_COMPACT_SLACK", 0):
        _check_against_model(ops, max_running)


def _check_against_model(ops: list, max_running: int) -> None:
    aging = 0.5
    sched = Scheduler(max_running=max_running, aging_per_s=aging)
    model: dict[str, list] = {}  # pid -> [key, seq, running]
    seq = 0
    for now, (op, n, work) in enumerate(ops):
        pid = f"p{n}"
        if op == "add" and pid not in model:
            seq += 1
            sched.add(pid, float(now), float(work))
            model[pid] = [work + aging * now, seq, False, now]
        elif op == "update" and pid in model:
            sched.update(pid, float(work))
            model[pid][0] = work + aging * model[pid][3]
        elif op == "remove" and pid in model:
            sched.remove(pid)
            del model[pid]
        elif op == "schedule":
            admitted = sched.schedule(float(now)).admit
            free = max_running - sum(m[2] for m in model.values())
            waiting = sorted((m[0], m[1], p) for p, m in model.items() if not m[2])
            expected = [p for _, _, p in waiting[:free]]
            assert admitted == expected
            for p in admitted:
                model[p][2] = True
    assert len(sched) == len(model)
    assert sched.running == sum(m[2] for m in model.values())


MAX_WORK = 20


@settings(max_examples=80, deadline=None)
@given(
    jobs=st.lists(st.tuples(st.integers(0, 60), st.integers(1, MAX_WORK)), min_size=1, max_size=40),
    max_running=st.integers(1, 4),
    aging=st.sampled_from([0.5, 1.0, 2.0, 5.0]),
)
def test_no_program_starves(jobs: list[tuple[int, int]], max_running: int, aging: float) -> None:
    """Starvation bound. Keys are w + a*t (a = aging_per_s, t = arrival, w <= W = MAX_WORK), so a
    program q can be admitted before p only if w_q + a*t_q < w_p + a*t_p, i.e. t_q < t_p + W/a:
    p is overtaken only by programs arriving less than W/aging_per_s after it. In this discrete-time
    loop every running program burns one unit of work per tick and, while p waits, all max_running
    slots are busy with programs admitted before p, so

        wait_p <= sum(w_q for q != p with t_q < t_p + W/a) / max_running   ticks.

    Pure SJF (a = 0) has no such bound: a stream of short programs can hold p back forever."""
    sched = Scheduler(max_running=max_running, aging_per_s=aging)
    arrivals = sorted((t, i, w) for i, (t, w) in enumerate(jobs))
    remaining = {f"p{i}": w for _, i, w in arrivals}
    arrival = {f"p{i}": t for t, i, _ in arrivals}
    admitted_at: dict[str, tuple[int, int]] = {}  # pid -> (tick, position in admission order)
    running: list[str] = []
    order = 0
    tick, next_arrival = 0, 0
    while len(admitted_at) < len(jobs) or running:
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] == tick:
            _, i, w = arrivals[next_arrival]
            sched.add(f"p{i}", float(tick), float(w))
            next_arrival += 1
        for pid in sched.schedule(float(tick)).admit:
            admitted_at[pid] = (tick, order)
            order += 1
            running.append(pid)
        assert len(running) <= max_running
        for pid in list(running):
            remaining[pid] -= 1
            if remaining[pid] == 0:
                running.remove(pid)
                sched.remove(pid)
            else:
                sched.update(pid, float(remaining[pid]))
        tick += 1
    work = {f"p{i}": w for _, i, w in arrivals}
    window = MAX_WORK / aging
    for p, (tick_p, order_p) in admitted_at.items():
        overtakers = [q for q, (_, order_q) in admitted_at.items() if order_q < order_p and arrival[q] > arrival[p]]
        assert all(arrival[q] < arrival[p] + window for q in overtakers), (p, overtakers)
        bound = sum(work[q] for q in work if q != p and arrival[q] < arrival[p] + window) / max_running
        assert tick_p - arrival[p] <= bound, (p, tick_p, arrival[p], bound)
