"""Dynamic micro-batching: formation, max delay, bounded queue, deadlines, one worker thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from agent_fakes import FakeEngine, FakePair, label_for
from ofa_agent.batcher import Batcher
from ofa_agent.errors import DeadlineExceeded, NotReady, QueueFull

pytestmark = pytest.mark.anyio


def pairs(n: int, prefix: str = "t") -> list[FakePair]:
    return [FakePair(None, f"{prefix}{i}" + "x" * i) for i in range(n)]


async def make(engine: FakeEngine, **kw: float) -> Batcher:
    opts = dict(max_batch_size=4, max_queue_delay_ms=20, max_queue=16)
    opts.update(kw)
    b = Batcher(engine.predict, **opts)  # type: ignore[arg-type]
    b.start()
    return b


async def test_full_batches_form_and_answers_keep_their_order() -> None:
    engine = FakeEngine(delay_s=0.01)
    b = await make(engine)
    try:
        ps = pairs(8)
        results = await b.predict_many(ps, timeout_s=5)
        assert engine.batches == [4, 4]
        assert [r.prediction.label for r in results] == [label_for(p.text) for p in ps]
        assert [r.batch_size for r in results] == [4] * 8
    finally:
        await b.close()


async def test_separate_requests_share_one_forward() -> None:
    engine = FakeEngine()
    b = await make(engine, max_batch_size=8, max_queue_delay_ms=50)
    try:
        got = await asyncio.gather(*(b.predict_many([p], 5) for p in pairs(3)))
        assert engine.batches == [3]
        assert all(r[0].batch_size == 3 for r in got)
    finally:
        await b.close()


async def test_a_lone_pair_waits_at_most_the_max_queue_delay() -> None:
    engine = FakeEngine()
    b = await make(engine, max_batch_size=8, max_queue_delay_ms=60)
    try:
        t0 = time.monotonic()
        (r,) = await b.predict_many(pairs(1), 5)
        waited = time.monotonic() - t0
        assert 0.05 <= waited < 0.5
        assert r.queue_ms >= 50
    finally:
        await b.close()


async def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    engine = FakeEngine()
    b = await make(engine, max_batch_size=4, max_queue_delay_ms=2000)
    try:
        t0 = time.monotonic()
        await b.predict_many(pairs(4), 5)
        assert time.monotonic() - t0 < 0.5
    finally:
        await b.close()


async def test_full_queue_is_refused_with_retry_after() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    b = await make(engine, max_batch_size=2, max_queue_delay_ms=0, max_queue=4)
    try:
        first = asyncio.ensure_future(b.predict_many(pairs(2), 5))  # runs, blocked on the gate
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.predict_many(pairs(4), 5))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as err:
            await b.predict_many(pairs(1), 5)
        assert err.value.status == 429
        assert int(err.value.headers["Retry-After"]) >= 1
        assert err.value.message.startswith("the agent's queue is full (4 pairs waiting)")
        # all-or-nothing: a request larger than the free room is refused whole
        gate.set()
        assert len(await first) == 2 and len(await queued) == 4
        assert sum(engine.batches) == 6
    finally:
        gate.set()
        await b.close()


async def test_deadline_passes_in_the_queue_and_the_model_never_sees_the_pair() -> None:
    engine = FakeEngine(delay_s=0.3)
    b = await make(engine, max_batch_size=1, max_queue_delay_ms=0)
    try:
        slow = asyncio.ensure_future(b.predict_many([FakePair(None, "slow")], 5))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded) as err:
            await b.predict_many([FakePair(None, "late")], timeout_s=0.1)
        assert err.value.status == 504
        assert err.value.message == "no answer within the request deadline of 0.1 s"
        await slow
        await asyncio.sleep(0.05)
        assert engine.batches == [1]  # "late" was dropped, not run
    finally:
        await b.close()


async def test_forward_runs_in_one_worker_thread_and_the_loop_stays_free() -> None:
    engine = FakeEngine(delay_s=0.2)
    b = await make(engine, max_batch_size=2, max_queue_delay_ms=0)
    try:
        task = asyncio.ensure_future(
            asyncio.gather(*(b.predict_many([p], 5) for p in pairs(6)))
        )
        ticks = 0
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await task
        assert ticks > 20  # the loop kept running while forwards ran
        assert len(engine.threads) == 1
        assert threading.main_thread().name not in engine.threads
    finally:
        await b.close()


async def test_engine_failure_fails_that_batch_only() -> None:
    engine = FakeEngine(fail=True)
    b = await make(engine, max_queue_delay_ms=0)
    try:
        with pytest.raises(RuntimeError, match="engine exploded"):
            await b.predict_many(pairs(2), 5)
        engine.fail = False
        assert len(await b.predict_many(pairs(2), 5)) == 2
    finally:
        await b.close()


async def test_close_answers_queued_pairs_with_503() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    b = await make(engine, max_batch_size=1, max_queue_delay_ms=0)
    running = asyncio.ensure_future(b.predict_many(pairs(1), 5))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(b.predict_many(pairs(1, "q"), 5))
    await asyncio.sleep(0.01)
    await b.close()
    gate.set()
    with pytest.raises(NotReady):
        await queued
    running.cancel()


async def test_with_incoming_a_lone_pair_runs_at_once() -> None:
    engine = FakeEngine()
    b = Batcher(engine.predict, max_batch_size=8, max_queue_delay_ms=500, max_queue=16,
                incoming=lambda: 0)
    b.start()
    try:
        t0 = time.monotonic()
        await b.predict_many(pairs(1), 5)
        assert time.monotonic() - t0 < 0.2  # nobody else admitted: no reason to wait 500 ms
    finally:
        await b.close()


async def test_with_incoming_the_batch_waits_for_admitted_requests() -> None:
    engine = FakeEngine()
    coming = {"n": 1}
    b = Batcher(engine.predict, max_batch_size=8, max_queue_delay_ms=300, max_queue=16,
                incoming=lambda: coming["n"])
    b.start()
    try:
        first = asyncio.ensure_future(b.predict_many(pairs(1), 5))
        await asyncio.sleep(0.05)  # still parsing the second request
        coming["n"] = 0
        second = asyncio.ensure_future(b.predict_many(pairs(1, "s"), 5))
        await asyncio.gather(first, second)
        assert engine.batches == [2]
        coming["n"] = 5  # admitted requests that never arrive: the delay still bounds the wait
        t0 = time.monotonic()
        await b.predict_many(pairs(1, "z"), 5)
        assert 0.25 <= time.monotonic() - t0 < 1.0
    finally:
        await b.close()
