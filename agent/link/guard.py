"""No exception leaves a paho callback: paho's network thread would die with it, silently, and the agent would
neither receive nor publish again. A failing callback is logged with its context, counted, and put in the
retained status (``error``); the thread and the agent go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, Protocol, TypeVar

from .status import Status

log = logging.getLogger("vibrawatch.publish")
CALLBACK_LOG_EVERY_S = 60.0

F = TypeVar("F", bound=Callable[..., Any])


class CallbackErrors:
    """The bugs met in callbacks, by callback: how many, and when one was last logged."""

    def __init__(self, status: Status, wake: threading.Event) -> None:
        self.status, self.wake = status, wake
        self._seen: dict[str, tuple[int, float]] = {}  # callback -> (count, last logged)

    def record(self, name: str, e: Exception, context: str = "") -> None:
        """Log it with its context (the first with the traceback, then once a minute with the count) and put
        its one line in the retained status. Runs in paho's thread: never raises."""
        try:
            count, last = self._seen.get(name, (0, 0.0))
            now = time.monotonic()
            count += 1
            if count == 1:
                log.error("paho callback %s failed%s (the connection goes on): %s: %s", name, context,
                          type(e).__name__, e, exc_info=e)
                last = now
            elif now - last >= CALLBACK_LOG_EVERY_S:
                log.error("paho callback %s failed %d times so far, last%s: %s: %s", name, count, context,
                          type(e).__name__, e)
                last = now
            self._seen[name] = (count, last)
            self.status.error(f"{name}: {type(e).__name__}: {e}"[:200])
            self.wake.set()
        except Exception:  # nothing may leave the callback, not even a failing log handler
            pass


class _HasCallbackErrors(Protocol):
    callback_errors: CallbackErrors


def guarded(name: str) -> Callable[[F], F]:
    """Wrap a paho callback (a method of an object with ``callback_errors``) so that no exception leaves it."""

    def wrap(fn: F) -> F:
        @wraps(fn)
        def call(self: _HasCallbackErrors, *args: Any) -> Any:
            try:
                return fn(self, *args)
            except Exception as e:  # the network thread must survive any bug of ours
                self.callback_errors.record(name, e)
                return None

        return call  # type: ignore[return-value]

    return wrap
