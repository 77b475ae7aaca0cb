"""Bounded per-consumer queues of camera predictions: one for threads, one for asyncio coroutines.

The camera's inference thread publishes into every subscription and must never wait for a consumer:
a full queue drops its oldest prediction (counted), so a stream client that stops reading costs a
fixed amount of memory and nothing else. The gRPC server serves streams as coroutines on one event
loop (server/app.py), so its subscriptions wake a waiting coroutine with one
`call_soon_threadsafe` per prediction, and only when that coroutine is actually waiting: a client
that does not read leaves its coroutine blocked in a write, and costs the publisher no wake-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from edgecam.server.pipeline import Prediction

S = TypeVar("S")


class _Bounded(Generic[S]):
    """The queue and drop count both kinds share; `put` is called from the inference thread."""

    def __init__(self, maxsize: int, on_close: Callable[[S], None]) -> None:
        self._queue: collections.deque[Prediction] = collections.deque(maxlen=maxsize)
        self._on_close = on_close
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def _append(self, prediction: Prediction) -> bool:
        dropped = len(self._queue) == self._queue.maxlen
        self._queue.append(prediction)
        self.dropped += dropped
        return dropped


class Subscription(_Bounded["Subscription"]):
    """A bounded queue of predictions for one thread; a slow consumer loses its oldest ones."""

    def __init__(self, maxsize: int, on_close: Callable[[Subscription], None]) -> None:
        super().__init__(maxsize, on_close)
        self._cond = threading.Condition()

    def put(self, prediction: Prediction) -> bool:
        """Queue a prediction; True if the oldest queued one had to be dropped for it."""
        with self._cond:
            dropped = self._append(prediction)
            self._cond.notify()
        return dropped

    def get(self, timeout: float | None = None) -> Prediction | None:
        """The next prediction, or None after `timeout` seconds or once closed and drained."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed, timeout)
            return self._queue.popleft() if self._queue else None

    def iter(self, idle_timeout: float | None = None) -> Iterator[Prediction]:
        """Predictions until closed, or until none came for `idle_timeout` seconds."""
        while (prediction := self.get(idle_timeout)) is not None:
            yield prediction

    def __iter__(self) -> Iterator[Prediction]:
        return self.iter()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._on_close(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscription(_Bounded["AsyncSubscription"]):
    """A bounded queue of predictions read by one coroutine on `loop`; create it on that loop."""

    def __init__(
        self, maxsize: int, on_close: Callable[[AsyncSubscription], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(maxsize, on_close)
        self._loop = loop
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._waiting = False  # a coroutine sleeps in get(): the next put must wake it

    def put(self, prediction: Prediction) -> bool:
        """Queue a prediction (any thread); True if the oldest queued one had to be dropped for it."""
        with self._lock:
            dropped = self._append(prediction)
            wake, self._waiting = self._waiting, False
        if wake:
            self._wake()
        return dropped

    async def get(self, timeout: float) -> Prediction | None:
        """The next prediction, or None after `timeout` seconds or once closed and drained."""
        with self._lock:
            if self._queue or self._closed:
                return self._queue.popleft() if self._queue else None
            self._ready.clear()
            self._waiting = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        with self._lock:
            self._waiting = False
            return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wake = self._waiting
        if wake:
            self._wake()
        self._on_close(self)

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to wake
            self._loop.call_soon_threadsafe(self._ready.set)
