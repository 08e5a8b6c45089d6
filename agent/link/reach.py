"""A broker that cannot be reached: why (in words a user can act on), when the next attempt comes, and how often
to say so. The agent's connection and the monitor's ingest both use it, so both say it alike.

The first failure is logged with its reason and the next attempt's delay at once, then at a doubling interval
capped at ``UNREACHABLE_LOG_MAX_S``, with the count of failed attempts and what waits meanwhile (the agent's
spooled messages, the monitor's page): a broker down all night costs a few dozen lines, not one per attempt.
paho does the retrying (``reconnect_delay_set(min, max)``: the wait doubles from min up to max and starts again
after a successful connect); ``Reach`` mirrors that schedule to say when the next attempt comes.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable

log = logging.getLogger("vibrawatch.publish")
UNREACHABLE_LOG_FIRST_S = 10.0  # after the first failure is logged, the next line after this long...
UNREACHABLE_LOG_MAX_S = 300.0  # ...doubling up to this: a broker down all night costs a few dozen lines


def connect_failure_reason(exc: BaseException | None, tls: bool = False) -> str:
    """Why a connection attempt failed, in words a user can act on (the exception's own text included);
    with ``tls``, a connection reset while connecting is the TLS handshake failing (e.g. a plain port)."""
    if exc is None:
        return "unknown reason"
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, socket.gaierror):
        return f"the broker's host name does not resolve (DNS: {exc})"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError) or (tls and isinstance(exc, ConnectionResetError)):
        return f"TLS handshake failed ({text}): check ca_file, cert_file/key_file and the broker's certificate"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that host and port (wrong port, or the broker is down)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from the host ({text}): a firewall, or the wrong address"
    return text


def _nothing() -> str:
    return ""


class Reach:
    """Connection attempts failed since the last successful connect, when they were last logged, and the backoff
    paho is waiting out (``min_backoff_s`` doubling to ``max_backoff_s``, the values given to paho).
    ``waiting`` says what waits meanwhile, appended to each line (e.g. "3 message(s) spooled")."""

    def __init__(self, host: str, port: int, max_backoff_s: float, waiting: Callable[[], str] = _nothing,
                 logger: logging.Logger = log, min_backoff_s: float = 1.0) -> None:
        self.host, self.port, self.waiting, self.log = host, port, waiting, logger
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.failures = 0
        self._failed_since = 0.0
        self._logged_at = 0.0
        self._log_gap = UNREACHABLE_LOG_FIRST_S
        self._delay: float | None = None

    def _step(self) -> float:
        """One of paho's waits (its ``_reconnect_wait``): min after a connect, then doubling up to max."""
        self._delay = self.min_backoff_s if self._delay is None else min(2 * self._delay, self.max_backoff_s)
        return self._delay

    def new_client(self) -> None:
        """A new paho client starts connecting (e.g. falling back to MQTT 3.1.1): its backoff starts afresh."""
        self._delay = None

    def lost(self) -> None:
        """A connection that was up dropped: paho waits once (min) before its first attempt to reconnect."""
        self._delay = None
        self._step()

    def failed(self, reason: str, answered: bool = False) -> None:
        """A connection attempt failed (``answered``: the broker refused it, else no connection was made): log the
        first failure with its reason and when the next attempt comes at once, then at a doubling interval
        capped at UNREACHABLE_LOG_MAX_S, with the number of attempts and what waits meanwhile."""
        # paho (2.2, measured) waits once after each failure, except after the very first attempt of a new client
        # fails to connect: it waits twice then (min, then 2 x min).
        twice = self._delay is None and not answered
        delay = self._step() + (self._step() if twice else 0.0)
        now = time.monotonic()
        self.failures += 1
        what = self.waiting()
        tail = f"; {what}" if what else ""
        if self.failures == 1:
            self._failed_since, self._logged_at, self._log_gap = now, now, UNREACHABLE_LOG_FIRST_S
            then = (f"then every {self.max_backoff_s:g} s" if self.max_backoff_s <= self.min_backoff_s
                    else f"the wait doubling up to {self.max_backoff_s:g} s")
            self.log.warning("cannot reach the broker at %s:%d: %s; next attempt in %g s, %s%s", self.host, self.port,
                             reason, delay, then, tail)
        elif now - self._logged_at >= self._log_gap:
            self._logged_at = now
            self._log_gap = min(2 * self._log_gap, UNREACHABLE_LOG_MAX_S)
            self.log.warning("still cannot reach the broker at %s:%d after %d attempts over %.0f s: %s; next attempt "
                             "in %g s%s", self.host, self.port, self.failures, now - self._failed_since, reason, delay,
                             tail)

    def reached(self) -> str:
        """The broker accepted a connection: start counting afresh; the words the 'connected' line ends with."""
        after = (f" after {self.failures} failed attempt(s) over {time.monotonic() - self._failed_since:.0f} s"
                 if self.failures else "")
        self.failures, self._delay = 0, None
        return after
