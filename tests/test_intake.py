"""Intake: separate requests' submissions share one transaction yet keep their own outcomes,
and one that is refused changes nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from depin.db.group import GroupCommit
from depin.db.models import Job, Setting
from depin.errors import (
    ConflictError,
    DatabaseError,
    DepinError,
    ForbiddenError,
    InsufficientFundsError,
    ReplayError,
    RevokedKeyError,
    UnauthenticatedError,
)
from depin.intake import Submission
from depin.nonces import request_nonce
from depin.views import JobView
from tests.factories import World, job


def _jobs(world: World) -> int:
    with world.client.market.sessions() as s:  # type: ignore[attr-defined]
        return int(s.execute(select(func.count(Job.id))).scalar_one())


def test_each_submission_in_a_group_gets_its_own_job(world: World) -> None:
    subs = [Submission(world.sign(job(f"j{i}"))) for i in range(5)]
    answers = world.client.market.submit_each(subs)  # type: ignore[attr-defined]
    assert [a.name for a in answers] == [f"j{i}" for i in range(5)]
    assert all(isinstance(a, JobView) and a.state == "pending" for a in answers)
    assert world.client.verify_ledger().ok


def test_a_refused_submission_fails_alone_and_writes_nothing(world: World) -> None:
    market = world.client.market
    good, replayed = world.sign(job("good")), world.sign(job("replayed"))
    market.submit(replayed)
    world.client.new_key("mallory")
    world.client.create_account("mallory", key="mallory")
    pricey = job("pricey", resources={"gpus": 8}, max_duration_s=7 * 24 * 3600)
    before_jobs, before_available = _jobs(world), world.available()
    answers = market.submit_each(  # type: ignore[attr-defined]
        [
            Submission(replayed),  # its envelope's nonce was spent
            Submission(good, issuer="mallory"),  # signed by dev, sent by mallory
            Submission(world.sign(pricey)),  # more than the balance can hold
            Submission(good),
        ]
    )
    assert isinstance(answers[0], ReplayError)
    assert isinstance(answers[1], ForbiddenError)
    assert isinstance(answers[2], InsufficientFundsError)
    assert isinstance(answers[3], JobView) and answers[3].name == "good"
    assert _jobs(world) == before_jobs + 1
    assert world.available() == before_available - answers[3].max_cost_micro_usd
    assert world.client.verify_ledger().ok


def test_a_replayed_request_in_a_group_is_refused(world: World) -> None:
    account_id = world.client.account(world.developer).id
    expires = datetime.now(UTC) + timedelta(minutes=2)
    nonce = request_nonce("ab" * 16, account_id, expires)
    first, second = world.sign(job("a")), world.sign(job("b"))
    answers = world.client.market.submit_each(  # type: ignore[attr-defined]
        [Submission(first, nonce=nonce), Submission(second, nonce=nonce)]
    )
    assert isinstance(answers[0], JobView)
    assert isinstance(answers[1], UnauthenticatedError)
    assert "already used" in str(answers[1])


def test_a_retry_with_its_idempotency_key_gets_the_first_job_back(world: World) -> None:
    market = world.client.market
    envelope = world.sign(job("once"))
    [first] = market.submit_each([Submission(envelope, idempotency_key="retry-key-0001")])  # type: ignore[attr-defined]
    resigned = world.sign(job("once"))  # the SDK signs again on retry: same request
    [again] = market.submit_each([Submission(resigned, idempotency_key="retry-key-0001")])  # type: ignore[attr-defined]
    other = world.sign(job("another"))
    [refused] = market.submit_each([Submission(other, idempotency_key="retry-key-0001")])  # type: ignore[attr-defined]
    assert isinstance(first, JobView) and isinstance(again, JobView) and again.id == first.id
    assert isinstance(refused, ConflictError)
    assert _jobs(world) == 1


def test_twins_in_one_group_see_one_act_and_both_get_its_job(world: World) -> None:
    # A retry can reach the server while its first attempt still waits in the same group.
    first, resent = world.sign(job("once")), world.sign(job("once"))
    other = world.sign(job("another"))
    answers = world.client.market.submit_each(  # type: ignore[attr-defined]
        [
            Submission(first, idempotency_key="twin-key-0001"),
            Submission(resent, idempotency_key="twin-key-0001"),
            Submission(other, idempotency_key="twin-key-0001"),
        ]
    )
    assert isinstance(answers[0], JobView) and isinstance(answers[1], JobView)
    assert answers[1].id == answers[0].id
    assert isinstance(answers[2], ConflictError) and "different request" in str(answers[2])
    assert _jobs(world) == 1
    assert world.client.verify_ledger().ok


def test_a_key_revoked_after_admission_fails_its_submission(world: World) -> None:
    envelope = world.sign(job())
    market = world.client.market
    keys, fleet, prices = market._admission([envelope.signatures[0].keyid])  # type: ignore[attr-defined]
    world.client.revoke_key(world.developer)
    from depin import intake

    subs = [Submission(envelope)]
    admitted = intake.admit_each(
        subs, keys, fleet, prices, audience=market.market_id, now=datetime.now(UTC)
    )  # type: ignore[attr-defined]
    outcomes = market._tx(lambda s: intake.queue_each(s, subs, admitted, now=datetime.now(UTC)))  # type: ignore[attr-defined]
    assert isinstance(outcomes[0], RevokedKeyError)
    assert _jobs(world) == 0


def test_group_commit_keeps_each_writers_work_or_error_to_itself(world: World) -> None:
    """Forty writers share a few transactions; a writer that fails leaves no row behind."""
    market = world.client.market
    writer = GroupCommit(market.sessions)  # type: ignore[attr-defined]
    gate, queued = threading.Event(), threading.Barrier(40)
    results: dict[int, object] = {}

    def write(i: int) -> None:
        def work(s: Session) -> int:
            if i == 0:
                gate.wait()  # hold the first transaction open while the others queue
            s.add(Setting(key=f"test-{i}", value=str(i)))
            s.flush()
            if i % 7 == 3:
                raise DepinError(f"refused {i}")
            return i * 10

        queued.wait()
        try:
            results[i] = writer.run(work)
        except DepinError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    gate.set()
    for t in threads:
        t.join()
    writer.close()
    assert results == {i: (f"refused {i}" if i % 7 == 3 else i * 10) for i in range(40)}
    with market.sessions() as s:  # type: ignore[attr-defined]
        kept = {k for (k,) in s.execute(select(Setting.key).where(Setting.key.like("test-%")))}
    assert kept == {f"test-{i}" for i in range(40) if i % 7 != 3}
    assert writer.batches < 40  # writers that queued together committed together


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_that_stops_answers_every_waiter_and_refuses_new_work(world: World) -> None:
    writer = GroupCommit(world.client.market.sessions)  # type: ignore[attr-defined]

    def interrupted(s: Session) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        writer.run(interrupted)
    writer._thread.join(timeout=10)
    with pytest.raises(DatabaseError, match="writer stopped"):
        writer.run(lambda s: 1)  # told at once, not left waiting for ever
