"""Dynamic micro-batching: pairs queue up, one worker thread runs one engine.predict per batch.

A batch closes when it holds `max_batch_size` pairs or when its first pair has waited
`max_queue_delay_ms` (as Triton's dynamic batcher and Ray Serve's @serve.batch do). While a
batch runs in the worker thread the event loop stays free and the next batch fills. The queue is
bounded (`max_queue` pairs, then QueueFull -> 429 with Retry-After) and every pair carries the
deadline of its request: a pair whose deadline passes while queued is answered 504 and never
reaches the model; a request whose deadline passes during its forward gets 504 and the result is
dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import DeadlineExceeded, NotReady, QueueFull

log = logging.getLogger("ofa_agent.batcher")


class PredictFn(Protocol):
    def __call__(self, pairs: list[Any], /) -> list[Any]: ...


@dataclass(frozen=True)
class Result:
    """One pair's answer plus where its time went."""

    prediction: Any
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Item:
    pair: Any
    future: asyncio.Future[Result]
    enqueued: float
    deadline: float
    timeout_s: float = 0.0


@dataclass
class BatchStats:
    """Observers for metrics; each is optional."""

    on_batch: Callable[[int, float], None] | None = None  # (size, seconds)
    on_queue_time: Callable[[float], None] | None = None  # seconds, per pair
    batches: int = 0
    pairs: int = 0
    ema_pair_s: float = field(default=0.05)  # moving average of forward seconds per pair


class Batcher:
    """Queue + batching loop + one worker thread. Create and use it inside a running loop."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue: int,
        stats: BatchStats | None = None,
        incoming: Callable[[], int] | None = None,
    ) -> None:
        self._predict = predict
        self._incoming = incoming
        self._worker_free_at = 0.0
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ofa-infer")
        self._task: asyncio.Task[None] | None = None
        self._running_pairs = 0
        self._forward_busy = False  # set by the worker thread itself, so it outlives cancellation
        self._closed = False

    # --- state --------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Pairs waiting for a batch."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Pairs inside the forward that runs now."""
        return self._running_pairs

    @property
    def worker_busy(self) -> bool:
        """True while the worker thread is inside engine.predict (even after close())."""
        return self._forward_busy

    def _run_forward(self, pairs: list[Any]) -> list[Any]:
        self._forward_busy = True
        try:
            return self._predict(pairs)
        finally:
            self._forward_busy = False

    @property
    def pending(self) -> int:
        """Pairs queued or running."""
        return len(self._queue) + self._running_pairs

    def retry_after_s(self) -> int:
        """A Retry-After estimate: time to work through the queue, at least 1 s."""
        batches = math.ceil((len(self._queue) + self._running_pairs) / self.max_batch_size)
        per_batch = self.stats.ema_pair_s * self.max_batch_size
        return max(1, math.ceil(batches * per_batch))

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="ofa-batcher")

    async def close(self) -> None:
        """Stop: pairs still queued are answered 503; the worker thread is not waited for."""
        self._closed = True
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady("the agent is shutting down"))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- submitting ---------------------------------------------------------------------
    def submit_many(
        self, pairs: Sequence[Any], timeout_s: float, report_s: float | None = None
    ) -> list[asyncio.Future[Result]]:
        """Queue pairs atomically (all or none: QueueFull) and return one future per pair.

        `timeout_s` is the time left to the deadline; `report_s` the deadline named in a 504.
        """
        if self._closed:
            raise NotReady("the agent is shutting down")
        if len(self._queue) + len(pairs) > self.max_queue:
            raise QueueFull(len(self._queue), self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for pair in pairs:
            fut: asyncio.Future[Result] = loop.create_future()
            self._queue.append(_Item(pair, fut, now, now + timeout_s, report_s or timeout_s))
            futures.append(fut)
        self._wakeup.set()
        return futures

    async def predict_many(
        self, pairs: Sequence[Any], timeout_s: float, report_s: float | None = None
    ) -> list[Result]:
        """Queue pairs and wait for all their answers, bounded by the deadline (504)."""
        futures = self.submit_many(pairs, timeout_s, report_s)
        try:
            done, _ = await asyncio.wait(futures, timeout=timeout_s)
            if len(done) < len(futures):
                raise DeadlineExceeded(report_s or timeout_s)
            return [f.result() for f in futures]
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()  # the loop skips cancelled pairs; a running forward is dropped

    # --- the loop -----------------------------------------------------------------------
    def _take_batch(self) -> list[_Item]:
        now = time.monotonic()
        batch: list[_Item] = []
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # cancelled by its request (deadline or client gone)
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlineExceeded(item.timeout_s))
                continue
            batch.append(item)
        return batch

    def _live_queued(self) -> int:
        return sum(1 for it in self._queue if not it.future.done())

    async def _fill(self) -> None:
        """Wait until the batch may close: full, delay spent, or (with `incoming`) nobody coming.

        The delay runs from the later of the first pair's arrival and the moment the worker
        became free. With an `incoming` callback (requests admitted but not queued yet), the
        batch also closes as soon as no such request remains: a lone request runs at once, and
        after a forward the batch waits for the answered clients' next requests that are already
        being parsed, instead of leaving with whatever happens to be queued.
        """
        opened = self._queue[0].enqueued
        if self._incoming is not None:
            opened = max(opened, self._worker_free_at)
        while self._live_queued() < self.max_batch_size:
            remaining = opened + self.max_queue_delay_s - time.monotonic()
            if remaining <= 0:
                return
            if self._incoming is not None:
                if self._incoming() <= 0:
                    return
                remaining = min(remaining, 0.002)  # re-check `incoming` (no event for it)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                continue

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._fill()
            batch = self._take_batch()
            if not batch:
                continue
            started = time.monotonic()
            self._running_pairs = len(batch)
            try:
                predictions = await loop.run_in_executor(
                    self._executor, self._run_forward, [it.pair for it in batch]
                )
                if len(predictions) != len(batch):
                    raise RuntimeError(
                        f"engine returned {len(predictions)} predictions for {len(batch)} pairs"
                    )
                error: BaseException | None = None
            except asyncio.CancelledError:
                self._running_pairs = 0
                raise
            except Exception as exc:  # the engine failed: every pair of the batch gets a 500
                log.exception("batch of %d failed", len(batch))
                error, predictions = exc, []
            finally:
                self._running_pairs = 0
            elapsed = time.monotonic() - started
            self._record(batch, started, elapsed)
            for i, item in enumerate(batch):
                if item.future.done():
                    continue
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(
                        Result(
                            predictions[i],
                            (started - item.enqueued) * 1000.0,
                            elapsed * 1000.0,
                            len(batch),
                        )
                    )
            self._worker_free_at = time.monotonic()

    def _record(self, batch: list[_Item], started: float, elapsed: float) -> None:
        st = self.stats
        st.batches += 1
        st.pairs += len(batch)
        st.ema_pair_s = 0.8 * st.ema_pair_s + 0.2 * (elapsed / len(batch))
        if st.on_batch is not None:
            st.on_batch(len(batch), elapsed)
        if st.on_queue_time is not None:
            for item in batch:
                st.on_queue_time(started - item.enqueued)
