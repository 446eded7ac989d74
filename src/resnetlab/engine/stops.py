"""Clean stops: SIGINT and SIGTERM ask a run to stop after its current step."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """While active (``with``), the first SIGINT or SIGTERM only records itself in
    ``signal``: the run finishes its step (under torchrun, the step at which its processes
    next agree, ``Trainer._after_step``), saves its state and stops. A second one acts at
    once (Ctrl-C raises KeyboardInterrupt, SIGTERM terminates): the state on disk is whole
    either way, since it is only ever replaced by a rename. Outside the main thread, where
    Python cannot install handlers, signals keep their usual effect."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number: int, _: FrameType | None) -> None:
        self.signal = signal.Signals(number)
        signal.signal(
            number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
