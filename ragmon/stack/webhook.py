"""A minimal Alertmanager webhook receiver: what `m2_3_stack.py webhook`, the tests and the
notebook use to see alerts arrive (and resolve) without Slack or PagerDuty.

    with WebhookReceiver() as hook:              # 127.0.0.1, a free port
        stack = Stack(..., extra_receiver_url=hook.url)
        ...
        hook.wait_for(lambda a: a["labels"]["alertname"] == "RagHighErrorRate", timeout=120)

Each POST body is one Alertmanager notification (version 4 webhook payload); `alerts` is the
flat list of alerts in arrival order, each with the notification's path added as "_path"
(and each notification its Authorization header as "_authorization" and its arrival time as
"_received").

What it keeps: the latest notifications, parsed, as long as they take at most
``max_kept_bytes`` (default MAX_KEPT_BYTES, 32 MB) together, measured as the sum of
``sys.getsizeof`` over every object of each notification, and at most MAX_NOTIFICATIONS of them;
older ones are let go (``dropped`` counts them). A body is at most MAX_BODY_BYTES and at most
MAX_READING bodies are read and parsed at a time, so a flood of posts holds at most
``max_kept_bytes`` plus what those few bodies take while they are parsed.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


# Alertmanager's notifications are a few KB; anything far larger is not one.
MAX_BODY_BYTES = 1_000_000
# The most notifications kept, and the most memory they may take together (see the docstring).
MAX_NOTIFICATIONS = 10_000
MAX_KEPT_BYTES = 32_000_000
# Bodies read and parsed at once; further posts wait for their turn.
MAX_READING = 4


def size_of(payload: object) -> int:
    """Bytes a parsed JSON value takes: sys.getsizeof of each object in it (walked without
    recursion, so a deeply nested body cannot overflow the stack)."""
    total, pending = 0, [payload]
    while pending:
        value = pending.pop()
        total += sys.getsizeof(value)
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return total


def _well_formed(payload: object) -> bool:
    """A JSON object whose "alerts", if present, is a list of objects with object labels."""
    if not isinstance(payload, dict):
        return False
    alerts = payload.get("alerts", [])
    return isinstance(alerts, list) and all(
        isinstance(alert, dict) and isinstance(alert.get("labels", {}), dict) for alert in alerts)


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, on_alert: Callable | None = None,
                 max_kept_bytes: int = MAX_KEPT_BYTES):
        if isinstance(max_kept_bytes, bool) or not isinstance(max_kept_bytes, int) or max_kept_bytes < 1:
            raise ValueError(f"max_kept_bytes={max_kept_bytes!r} must be a whole number of bytes "
                             ">= 1, e.g. 32_000_000")
        self._on_alert = on_alert
        self.max_kept_bytes = max_kept_bytes
        self.notifications: list[dict] = []
        self._sizes: list[int] = []  # size_of() each kept notification, in the same order
        self.kept_bytes = 0
        self._dropped = 0  # notifications let go of to stay within the limits
        self._changed = threading.Condition()
        self._reading = threading.BoundedSemaphore(MAX_READING)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self.send_response(413)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    return
                with receiver._reading:
                    body = self.rfile.read(length)
                    try:
                        payload = json.loads(body or b"{}")
                    except (ValueError, RecursionError):  # not JSON, or nested beyond parsing
                        payload = None
                    del body
                    if not _well_formed(payload):
                        self.send_response(400)
                        self.end_headers()
                        return
                    receiver._add(self.path, payload, size_of(payload),
                                  self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # keep test output clean
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "WebhookReceiver":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                            name="webhook-receiver")
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def dropped(self) -> int:
        """Notifications let go of to stay within max_kept_bytes and MAX_NOTIFICATIONS."""
        return self._dropped

    def _add(self, path: str, payload: dict, size: int, authorization: str | None = None) -> None:
        with self._changed:
            # "_authorization": the Authorization header it came with (a webhook token's check);
            # "_received": when it arrived (time.time()), for timelines of fault -> notification
            payload = dict(payload, _path=path, _authorization=authorization,
                           _received=time.time())
            self.notifications.append(payload)
            self._sizes.append(size)
            self.kept_bytes += size
            excess = 0
            while excess < len(self.notifications) and (
                    len(self.notifications) - excess > MAX_NOTIFICATIONS
                    or self.kept_bytes > self.max_kept_bytes):
                self.kept_bytes -= self._sizes[excess]
                excess += 1
            if excess:
                del self.notifications[:excess]
                del self._sizes[:excess]
                self._dropped += excess
            self._changed.notify_all()
        if self._on_alert is not None:
            for alert in payload.get("alerts", []):
                self._on_alert(dict(alert, _path=path))

    @property
    def alerts(self) -> list[dict]:
        with self._changed:
            return [dict(alert, _path=n["_path"]) for n in self.notifications
                    for alert in n.get("alerts", [])]

    def mark(self) -> int:
        """A position in the notifications: pass it as `since` to ignore what came before."""
        with self._changed:
            return self._dropped + len(self.notifications)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float, since: int = 0) -> dict | None:
        """The first alert (in arrival order, after notification `since`) matching `predicate`,
        waiting up to `timeout` s."""
        def first_alert():
            for notification in self.notifications[max(0, since - self._dropped):]:
                for alert in notification.get("alerts", []):
                    alert = dict(alert, _path=notification["_path"])
                    if predicate(alert):
                        return alert
            return None
        return self._wait(first_alert, timeout)

    def wait_for_notification(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """The first whole POST body matching `predicate` (e.g. a Slack-format one)."""
        return self._wait(lambda: next((n for n in self.notifications if predicate(n)), None), timeout)

    def _wait(self, find: Callable[[], dict | None], timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = find()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
