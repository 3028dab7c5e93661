"""The library's own warnings to the application's log (logger "ragmon"), bounded.

A warning is limited by its *reason* (unknown_model, bad_return_value, record_write, ...), never
by the value that caused it, so 50,000 distinct unknown models cost as few lines as one: the
first ``burst`` warnings of a reason are logged, then one per ``interval`` seconds, and each
line after a pause says how many of its reason were left out since the previous one. The
counters (rag_unknown_model_total, rag_instrumentation_errors_total{reason}) count every
occurrence. The text of a warning is redacted and cut (``redaction.redact_text``), so a value
quoted in it neither leaks a secret nor floods the log.
"""
from __future__ import annotations

import logging
import threading
import time

from ..checks import text_of
from .redaction import redact_text

# A warning's text is cut to this many characters.
MAX_WARNING_LENGTH = 2000


class WarningLimiter:
    """Logs at most ``burst`` warnings per reason, then one per ``interval`` seconds per reason.

    ``clock`` is the time source (time.monotonic); tests pass their own.
    """

    def __init__(self, logger: logging.Logger | None = None, burst: int = 5,
                 interval: float = 60.0, clock=time.monotonic):
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst={burst!r} must be a whole number >= 1, e.g. burst=5")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"interval={interval!r} must be a number of seconds > 0, e.g. 60")
        self.logger = logger or logging.getLogger("ragmon")
        self.burst = burst
        self.interval = float(interval)
        self.clock = clock
        self._lock = threading.Lock()
        # reason -> [allowance left, when it was last refilled, left out since the last line,
        #            when the last line was logged]
        self._reasons: dict[str, list] = {}
        self.suppressed = 0  # warnings left out, all reasons

    def warn(self, reason: str, message: str, *args, level: int = logging.WARNING,
             exc_info: bool = False) -> bool:
        """Logs ``message % args`` unless `reason` has used up its allowance; True if logged."""
        with self._lock:
            now = self.clock()
            state = self._reasons.get(reason)
            if state is None:
                state = self._reasons[reason] = [float(self.burst), now, 0, None]
            allowance = min(float(self.burst), state[0] + (now - state[1]) / self.interval)
            state[1] = now
            if allowance < 1:
                state[0] = allowance
                state[2] += 1
                self.suppressed += 1
                return False
            state[0] = allowance - 1
            left_out, since = state[2], state[3]
            state[2], state[3] = 0, now
        if not self.logger.isEnabledFor(level):
            return True
        try:
            text = message % args if args else message
        except Exception:  # a bad format must not raise into the host
            text = f"{message} {' '.join(text_of(arg) for arg in args)}"
        text = redact_text(text, MAX_WARNING_LENGTH)
        if left_out:
            text += (f" [{left_out} more warning(s) of this kind ({reason}) were left out in the "
                     f"last {now - since:.0f} s]")
        self.logger.log(level, "%s", text, exc_info=exc_info)
        return True
