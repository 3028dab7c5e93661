"""`report --format html` opened in a real headless Chromium (Debian's package), driven over
the DevTools protocol: the page loads with no console error and no network request, its charts
are drawn, and a screenshot is taken."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from pathlib import Path

import psutil
import pytest

from ragmon.stack.process import spawn, wait_until
from tests.conftest import require_binaries
from tests.report.test_report import rec, write_records
from tests.report.test_report_cli import run

CHROMIUM_INSTALL = "apt-get install chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--remote-debugging-address=127.0.0.1",
                  "--remote-debugging-port=0", "--window-size=1200,900"]


def report_log(log_dir: Path) -> None:
    records = []
    for n in range(60):
        records.append(rec(n, total=0.4 + (n % 7) * 0.3, ago=60 + n * 300,
                           model=("gpt-4o-mini", "claude-3-5-haiku")[n % 2],
                           cost=0.001 * (1 + n % 5), relevance=0.5 + (n % 5) / 10,
                           status="error" if n % 13 == 0 else "success",
                           error_type="TimeoutError" if n % 13 == 0 else None,
                           attributes={"user_feedback": ("up", "down")[n % 3 == 0]}))
    records.append(rec(99, total=12.5, ago=90, cost=0.75, model="gpt-4o"))
    write_records(log_dir, records)


class DevTools:
    """A minimal DevTools-protocol client over one websocket (flattened target sessions)."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(url, max_size=64 << 20, open_timeout=30))
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self):
        self.stack.close()


@pytest.fixture
def chromium(tmp_path):
    """The DevTools websocket URL of a fresh headless Chromium; every process of it is gone
    after the test, failed or not."""
    [binary] = require_binaries("chromium", install=CHROMIUM_INSTALL)
    profile = tmp_path / "profile"
    browser = spawn("chromium", [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 "about:blank"], tmp_path / "chromium.log")
    family: set[int] = set()
    try:
        port_file = profile / "DevToolsActivePort"
        wait_until(lambda: port_file.exists() and len(port_file.read_text().splitlines()) >= 2,
                   60, what=f"Chromium's DevTools port ({browser.log_tail()})")
        port, path = port_file.read_text().splitlines()[:2]
        family = {p.pid for p in psutil.Process(browser.pid).children(recursive=True)}
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        try:
            family |= {p.pid for p in psutil.Process(browser.pid).children(recursive=True)}
        except psutil.Error:
            pass
        browser.stop(timeout=15)
        left = [p for p in (_process(pid) for pid in family) if p is not None]
        for process in left:  # children of ours the browser did not take down with it
            process.kill()
        psutil.wait_procs(left, timeout=10)
        assert browser.process() is None and not [p for p in left if p.is_running()
                                                  and p.status() != psutil.STATUS_ZOMBIE]


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def test_the_html_report_opens_in_chromium_offline_with_its_charts(tmp_path, chromium):
    log_dir = tmp_path / "logs"
    report_log(log_dir)
    page = tmp_path / "report.html"
    proc = run("report", "--hours", 24, "--format", "html", "--output", page, "--log-dir", log_dir)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "req-99" in text and "Most expensive requests" in text and "Bottleneck stage" in text
    assert "user_feedback" in text and "<script" not in text

    devtools = DevTools(chromium)
    try:
        target = devtools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = devtools.call("Target.attachToTarget", {"targetId": target,
                                                           "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            devtools.call(f"{domain}.enable", session=session)
        devtools.call("Page.navigate", {"url": page.as_uri()}, session=session)
        devtools.wait_for("Page.loadEventFired")
        charts = devtools.call("Runtime.evaluate", {"returnByValue": True, "expression": """
            Array.from(document.querySelectorAll('.chart svg')).map(svg => {
                const box = svg.getBoundingClientRect();
                return [svg.parentElement.id, Math.round(box.width), Math.round(box.height),
                        svg.querySelectorAll('path').length];
            })"""}, session=session)["result"]["value"]
        shot = devtools.call("Page.captureScreenshot", {"format": "png",
                                                        "captureBeyondViewport": True},
                             session=session)["data"]
        devtools.call("Runtime.evaluate", {"expression": "1"}, session=session)  # drain events
    finally:
        devtools.close()
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot))
    if os.environ.get("RAGMON_KEEP_SCREENSHOT"):
        Path(os.environ["RAGMON_KEEP_SCREENSHOT"]).write_bytes(screenshot.read_bytes())

    requests = [e["params"]["request"]["url"] for e in devtools.events
                if e.get("method") == "Network.requestWillBeSent"]
    assert requests == [page.as_uri()], requests  # the page itself, nothing else
    console = [e["params"] for e in devtools.events if e.get("method") in (
        "Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")]
    assert console == [], console
    by_id = {chart[0]: chart[1:] for chart in charts}
    assert set(by_id) == {"latency-chart", "spend-chart", "quality-chart"}
    for chart_id, (width, height, paths) in by_id.items():
        assert width > 400 and height > 100 and paths > 20, (chart_id, width, height, paths)

    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[0] > 900 and pixels.shape[1] >= 1000
    drawn = (pixels[..., :3] < 0.9).any(axis=-1).mean()
    assert drawn > 0.02, f"the screenshot is nearly blank ({drawn:.1%} drawn)"


def test_an_empty_period_is_a_page_that_says_so(tmp_path):
    write_records(tmp_path, [rec(1, ago=5 * 3600)])
    page = tmp_path / "empty.html"
    proc = run("report", "--hours", 1, "--format", "html", "--output", page, "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert f"no requests in the last 1 h in {tmp_path}" in text and "<svg" not in text
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


def test_a_missing_browser_names_its_own_install_command(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as missing:
        require_binaries("chromium", install=CHROMIUM_INSTALL)
    assert "apt-get install chromium" in str(missing.value)
    assert "prometheus" not in str(missing.value)
