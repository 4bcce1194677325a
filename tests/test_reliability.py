"""A node's reliability is learned from what the market saw, weighted toward the recent."""

from __future__ import annotations

from providers.reliability import Record, after_heartbeat, after_outcome


def test_a_new_node_is_as_reliable_as_its_provider_declared() -> None:
    assert Record(declared=0.9).reliability == 0.9


def test_losses_pull_reliability_down_and_completions_back_up() -> None:
    record = Record(declared=0.99)
    for _ in range(3):
        record = after_outcome(record, node_fault=True)
    low = record.reliability
    assert low < 0.7
    for _ in range(20):
        record = after_outcome(record, node_fault=False)
    assert record.reliability > low + 0.2


def test_recent_outcomes_weigh_more_than_old_ones() -> None:
    old_losses = Record(declared=0.99)
    for fault in [True] * 5 + [False] * 5:
        old_losses = after_outcome(old_losses, node_fault=fault)
    new_losses = Record(declared=0.99)
    for fault in [False] * 5 + [True] * 5:
        new_losses = after_outcome(new_losses, node_fault=fault)
    assert old_losses.reliability > new_losses.reliability


def test_missed_heartbeats_lower_uptime_and_on_time_ones_do_not() -> None:
    on_time = after_heartbeat(Record(declared=1.0), gap_s=5.0, interval_s=5.0)
    assert on_time.uptime == 1.0
    late = after_heartbeat(Record(declared=1.0), gap_s=60.0, interval_s=5.0)
    assert late.uptime < 0.9 and late.reliability == late.uptime


def test_a_strangers_nonsense_stays_within_zero_and_one() -> None:
    record = after_heartbeat(Record(declared=1.0), gap_s=float("inf"), interval_s=0.0)
    assert 0.0 <= record.reliability <= 1.0
    huge = after_heartbeat(Record(declared=1.0), gap_s=1e30, interval_s=1.0)
    assert 0.0 <= huge.reliability <= 1.0
