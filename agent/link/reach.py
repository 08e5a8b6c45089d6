"""A broker that cannot be reached: why (in words a user can act on), and how often to say so.

The first failure is logged with its reason at once, then at a doubling interval capped at
``UNREACHABLE_LOG_MAX_S``, with the count of failed attempts and of spooled messages: a broker down all night
costs a few dozen lines, not one per reconnect attempt.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

from .broker import MqttSection
from .spool import Spool

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


class Reach:
    """Connection attempts failed since the last successful connect, and when they were last logged."""

    def __init__(self, settings: MqttSection, spool: Spool) -> None:
        self.settings, self.spool = settings, spool
        self.failures = 0
        self._failed_since = 0.0
        self._logged_at = 0.0
        self._log_gap = UNREACHABLE_LOG_FIRST_S

    def failed(self, reason: str) -> None:
        """A connection attempt failed: log the first failure with its reason, then at a doubling interval
        capped at UNREACHABLE_LOG_MAX_S, with the number of attempts and of messages waiting in the spool."""
        m, now = self.settings, time.monotonic()
        self.failures += 1
        if self.failures == 1:
            self._failed_since, self._logged_at, self._log_gap = now, now, UNREACHABLE_LOG_FIRST_S
            log.warning("cannot reach the broker at %s:%d: %s; retrying every %d s at most, %d message(s) spooled",
                        m.host, m.port, reason, m.max_backoff_s, len(self.spool))
        elif now - self._logged_at >= self._log_gap:
            self._logged_at = now
            self._log_gap = min(2 * self._log_gap, UNREACHABLE_LOG_MAX_S)
            log.warning("still cannot reach the broker at %s:%d after %d attempts over %.0f s: %s; %d message(s) "
                        "spooled", m.host, m.port, self.failures, now - self._failed_since, reason, len(self.spool))

    def reached(self) -> str:
        """The broker accepted a connection: start counting afresh; the words the 'connected' line ends with."""
        after = (f" after {self.failures} failed attempt(s) over {time.monotonic() - self._failed_since:.0f} s"
                 if self.failures else "")
        self.failures = 0
        return after
