"""The daemon-wide budgets of streaming connections and the pending-connection slots."""

from __future__ import annotations

import pytest

from cri_shim.admission import PendingSlots
from cri_shim.streaming.limits import Budget, DaemonBudgets

pytestmark = pytest.mark.timeout(30)


class Conn:
    """A holder that records being cut off and leaves its budgets as a connection does."""

    def __init__(self, name: str, budget: Budget | None = None) -> None:
        self.name = name
        self.budget = budget
        self.cut: list[str] = []

    def cut_off(self, reason: str) -> None:
        self.cut.append(reason)
        if self.budget is not None:
            self.budget.leave(self)

    def __repr__(self) -> str:
        return self.name


def test_budget_cuts_off_the_biggest_holder_when_the_total_goes_over() -> None:
    reasons: list[str] = []
    budget = Budget(100, "bytes", on_cut=reasons.append)
    small, big = Conn("small", budget), Conn("big", budget)
    budget.join(small)
    budget.join(big)
    budget.add(small, 10)
    budget.add(big, 80)
    assert budget.total == 90 and not big.cut
    budget.add(small, 20)  # 110: the biggest holder goes, not the one that added
    assert big.cut and not small.cut
    assert reasons == ["daemon_bytes_limit"]
    assert budget.total == 30 == budget.held(small)
    assert budget.held(big) == 0
    budget.add(big, 1000)  # a holder that left is not counted any more
    budget.remove(big, 5)
    assert budget.total == 30


def test_budget_cuts_the_adding_holder_itself_if_it_holds_the_most() -> None:
    budget = Budget(10, "streams")
    a = Conn("a", budget)
    budget.join(a)
    budget.add(a, 11)
    assert a.cut and budget.total == 0


def test_budget_remove_never_goes_below_what_was_held() -> None:
    budget = Budget(10, "streams")
    a = Conn("a")
    budget.join(a)
    budget.add(a, 3)
    budget.remove(a, 5)
    assert budget.total == 0 == budget.held(a)


def test_daemon_budgets_leave_both() -> None:
    budgets = DaemonBudgets.of(10, 100)
    a = Conn("a")
    budgets.join(a)
    budgets.streams.add(a, 2)
    budgets.bytes.add(a, 50)
    budgets.leave(a)
    assert budgets.streams.total == 0 and budgets.bytes.total == 0


def test_budget_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError):
        Budget(0, "bytes")


# -- pending connections -------------------------------------------------------------------------


def test_pending_slots_drop_the_oldest_of_the_same_client_first() -> None:
    dropped: list[str] = []
    reasons: list[str] = []
    slots = PendingSlots(max_total=10, max_per_client=2, on_drop=reasons.append)
    a1 = slots.admit("10.0.0.1", lambda: dropped.append("a1"))
    slots.admit("10.0.0.2", lambda: dropped.append("b1"))
    slots.admit("10.0.0.1", lambda: dropped.append("a2"))
    slots.admit("10.0.0.1", lambda: dropped.append("a3"))
    assert dropped == ["a1"] and reasons == ["pending_per_client_limit"]
    assert slots.of_client("10.0.0.1") == 2 and len(slots) == 3
    slots.release(a1)  # already dropped: no-op
    assert len(slots) == 3


def test_pending_slots_drop_the_oldest_overall_when_full() -> None:
    dropped: list[int] = []
    slots = PendingSlots(max_total=3, max_per_client=3, on_drop=lambda reason: None)
    pending = [slots.admit(f"10.0.0.{i}", lambda i=i: dropped.append(i)) for i in range(3)]
    slots.release(pending[1])  # authenticated: leaves its slot
    slots.admit("10.0.0.9", lambda: dropped.append(9))
    assert dropped == []
    slots.admit("10.0.0.8", lambda: dropped.append(8))
    assert dropped == [0]
    assert len(slots) == 3 and slots.of_client("10.0.0.0") == 0


def test_pending_slots_drop_oldest_on_demand() -> None:
    dropped: list[str] = []
    slots = PendingSlots(max_total=4, max_per_client=4)
    assert not slots.drop_oldest("connection_limit")
    slots.admit("x", lambda: dropped.append("first"))
    slots.admit("x", lambda: dropped.append("second"))
    assert slots.drop_oldest("connection_limit")
    assert dropped == ["first"] and len(slots) == 1


def test_pending_slots_need_positive_limits() -> None:
    with pytest.raises(ValueError):
        PendingSlots(0, 1)
