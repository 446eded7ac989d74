"""Requests gathered into batches for one network.

One worker thread calls the network on every request that arrived while its last call ran (at
most ``max_batch``): a lone request waits for nothing, concurrent ones share calls. Measured by
benchmarks/serve_batching.py on 2 CPU cores: 1.25x the requests per second for resnet50 at
224 px, none for resnet18, whose requests are mostly decoding and encoding."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 8  # the default: requests explained in one call of the network
_STOP = object()


class Batcher(Generic[Item, Result]):
    """``batcher(item)`` returns ``work(items)[i]`` for the batch its item joined (it blocks
    the calling thread). ``batches`` counts ``work``'s calls and ``items`` the items served."""

    def __init__(self, work: Callable[[list[Item]], list[Result]], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more (got {max_batch})")
        self._work = work
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.batches = 0
        self.items = 0
        self._thread = threading.Thread(target=self._serve, name="resnetlab-batcher", daemon=True)
        self._thread.start()

    def __call__(self, item: Item) -> Result:
        future: Future[Result] = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Stop the worker once the requests already queued are answered."""
        self._queue.put(_STOP)
        self._thread.join()

    def _serve(self) -> None:
        while True:
            pending = [self._queue.get()]
            while (
                pending[-1] is not _STOP
                and len(pending) < self._max_batch
                and not self._queue.empty()
            ):
                pending.append(self._queue.get())
            stop = pending[-1] is _STOP
            if stop:
                pending.pop()
            if pending:
                self._run(pending)
            if stop:
                return

    def _run(self, pending: list[tuple[Item, Future[Result]]]) -> None:
        """One call of ``work``; its results, or its error, to every waiting request."""
        self.batches += 1
        self.items += len(pending)
        try:
            results = self._work([item for item, _ in pending])
        except Exception as exc:  # each request of the batch answers with the error
            for _, future in pending:
                future.set_exception(exc)
            return
        for (_, future), result in zip(pending, results, strict=True):
            future.set_result(result)
