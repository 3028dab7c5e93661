"""The monitoring stack without Docker: Prometheus, Alertmanager, Pushgateway (and node-exporter
where installed) from the Debian binaries, on 127.0.0.1, with their data under STACK_DIR.

    python m2_3_stack.py up [--fast] [--app-target 127.0.0.1:8000 ...] [--prometheus-port N ...]
    python m2_3_stack.py status
    python m2_3_stack.py down
    python m2_3_stack.py webhook [--port 5001]          # print alerts Alertmanager sends
    python m2_3_stack.py render-alertmanager [--out F]  # alertmanager.yml + receivers from .env

It runs the SAME prometheus.yml jobs and rule files as docker-compose.monitoring.yml, rendered
with the targets rewritten for loopback (ragmon/stack_config.py). `--fast` renders teaching/test
copies with 1 s scrapes and evaluations, short windows and `for` / 60, so alerts fire and
resolve within seconds; the shipped files keep their production values.

From Python (tests, the notebook):

    from m2_3_stack import Stack
    with Stack(workdir=tmp, app_targets=["127.0.0.1:8000"], fast=True,
               extra_receiver_url=hook.url) as stack:
        stack.urls["prometheus"], stack.query("up")

The daemons are stopped by the PIDs recorded in STACK_DIR/run, so `down` works from another
process, and `Stack.down()` is idempotent (safe in finally blocks and atexit).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Mapping

from .render import (ALERTMANAGER_FILE, PROMETHEUS_FILE, RULE_FILES, StackConfigError,
                                 dump_yaml, load_yaml, normalise_app_jobs, render_alertmanager,
                                 render_prometheus, render_rules)
from .process import (COMPONENTS, INSTALL_COMMAND, Component, PidFile, StackError,
                                  find_binary, free_port, http_ok, log_tail, missing_binary_error,
                                  port_in_use, start_process, stop_process, wait_until)

__all__ = ["Stack", "StackError", "StackConfigError", "INSTALL_COMMAND", "main"]

PORT_SETTINGS = {"prometheus": "PROMETHEUS_PORT", "alertmanager": "ALERTMANAGER_PORT",
                 "pushgateway": "PUSHGATEWAY_PORT", "node_exporter": "NODE_EXPORTER_PORT"}


class Stack:
    """The local monitoring stack in `workdir` (default: STACK_DIR).

    app_targets: HOST:PORT list for the shipped app job ("rag-service"), or {job: [HOST:PORT]} to
        scrape several apps as separate jobs (alerts aggregate by job). Default: the app on
        127.0.0.1:METRICS_PORT.
    ports: {"prometheus", "alertmanager", "pushgateway", "node_exporter"} -> port; missing keys
        come from settings (PROMETHEUS_PORT, ...), 0 picks a free port.
    fast: short intervals, windows and `for` (tests, teaching).
    extra_receiver_url: a webhook that receives every alert, besides the configured receivers.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, app_targets=None, fast: bool = False,
                 ports: Mapping[str, int] | None = None, *, extra_receiver_url: str | None = None,
                 settings=None, node_exporter: bool = True, search_path: str | None = None):
        if settings is None:
            from ..settings import get_settings
            settings = get_settings()
        self.settings = settings
        self.workdir = Path(workdir if workdir is not None else settings.STACK_DIR).expanduser().resolve()
        if app_targets is None:
            app_targets = [f"127.0.0.1:{settings.METRICS_PORT}"]
        self.app_jobs = normalise_app_jobs(app_targets)
        self.fast = bool(fast)
        unknown = set(ports or {}) - set(PORT_SETTINGS)
        if unknown:
            raise ValueError(f"ports has unknown key(s) {sorted(unknown)}; expected some of "
                             f"{sorted(PORT_SETTINGS)}")
        self.requested_ports = {name: int(getattr(settings, setting))
                                for name, setting in PORT_SETTINGS.items()}
        for name, port in (ports or {}).items():
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"ports[{name!r}]={port!r} is not a TCP port; expected an integer "
                                 "from 1 to 65535, or 0 for a free one")
            self.requested_ports[name] = port
        self.extra_receiver_url = extra_receiver_url
        self.node_exporter = node_exporter
        self.search_path = search_path
        self._popens: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # --- paths -----------------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.workdir / "config"

    def _pid_file(self, name: str) -> PidFile:
        return PidFile(self.workdir / "run" / f"{name}.pid")

    @property
    def _state_file(self) -> Path:
        return self.workdir / "run" / "stack.json"

    def _state(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    # --- public API ------------------------------------------------------------------------------
    @property
    def urls(self) -> dict[str, str]:
        """name -> base URL of each component started (node_exporter absent if not running)."""
        return dict(self._state().get("urls", {}))

    @property
    def ports(self) -> dict[str, int]:
        return dict(self._state().get("ports", {}))

    def status(self) -> dict[str, bool]:
        """name -> running, for every component of the stack."""
        return {c.name: self._pid_file(c.name).process() is not None for c in COMPONENTS}

    def up(self, wait: bool = True, timeout: float = 60.0) -> "Stack":
        """Renders the configs, starts what is installed and (wait=True) waits until it is ready."""
        with self._lock:
            return self._up(wait, timeout)

    def down(self) -> dict[str, bool]:
        """Stops every component by PID. Idempotent. Returns name -> whether it was running."""
        with self._lock:
            return self._stop_all()

    def _stop_all(self) -> dict[str, bool]:
        stopped = {}
        for component in COMPONENTS:  # Prometheus first: it stops sending alerts
            stopped[component.name] = stop_process(self._pid_file(component.name),
                                                   self._popens.pop(component.name, None))
        self._state_file.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> "Stack":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def query(self, expr: str, timeout: float = 10.0) -> list[dict]:
        """Runs an instant PromQL query; returns the `result` list (raises StackError on errors)."""
        return self._api("/api/v1/query", {"query": expr}, timeout)["result"]

    def _api(self, path: str, params: dict, timeout: float) -> dict:
        base = self.urls.get("prometheus")
        if not base:
            raise StackError(f"the stack in {self.workdir} is not running; call up() first")
        url = f"{base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read() or b"{}").get("error", exc)
            except ValueError:
                reason = exc
            raise StackError(f"Prometheus rejected {params}: {reason}") from None
        if body.get("status") != "success":
            raise StackError(f"Prometheus query {params} failed: {body.get('error')}")
        return body["data"]

    # --- internals -------------------------------------------------------------------------------
    def _spec(self) -> dict:
        return {"app_jobs": {str(k): v for k, v in (self.app_jobs or {}).items()}, "fast": self.fast,
                "extra_receiver_url": self.extra_receiver_url,
                "ports": {k: v for k, v in self.requested_ports.items() if v}}

    def _up(self, wait: bool, timeout: float) -> "Stack":
        running = [name for name, alive in self.status().items() if alive]
        if running:
            state = self._state()
            started = set(state.get("urls", {}))
            if state.get("spec") == self._spec() and started and set(running) == started:
                return self  # the same stack is already up: up() is safe to call twice
            raise StackError(f"a monitoring stack is already running from {self.workdir} "
                             f"({', '.join(running)}) with other settings; stop it first with "
                             f"`python m2_3_stack.py down --workdir {self.workdir}` or Stack.down()")

        binaries: dict[str, str] = {}
        missing: list[Component] = []
        for component in COMPONENTS:
            if component.name == "node_exporter" and not self.node_exporter:
                continue
            found = find_binary(component, self.search_path)
            if found:
                binaries[component.name] = found
            elif component.required:
                missing.append(component)
        if missing:
            raise missing_binary_error(missing)

        ports = {}
        for name in binaries:
            port = self.requested_ports[name] or free_port()
            if port_in_use(port):
                flag = "--" + name.replace("_", "-") + "-port"
                raise StackError(f"port {port} for {name} on 127.0.0.1 is already in use. Stop "
                                 f"what uses it, or choose another port: {PORT_SETTINGS[name]}=... "
                                 f"in .env or {flag} N")
            ports[name] = port
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        self._render(ports, node_exporter="node_exporter" in binaries)
        data = self.workdir / "data"
        argv = {
            "prometheus": [f"--config.file={self.config_dir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={data / 'prometheus'}",
                           f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                           "--web.enable-lifecycle"],
            "alertmanager": [f"--config.file={self.config_dir / 'alertmanager.yml'}",
                             f"--storage.path={data / 'alertmanager'}",
                             f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                             # no gossip: a single local instance must not open a cluster port
                             "--cluster.listen-address="],
            "pushgateway": [f"--web.listen-address=127.0.0.1:{ports['pushgateway']}",
                            f"--persistence.file={data / 'pushgateway' / 'metrics.store'}"],
            "node_exporter": [f"--web.listen-address=127.0.0.1:{ports.get('node_exporter', 0)}"],
        }
        for sub in ("prometheus", "alertmanager", "pushgateway"):
            (data / sub).mkdir(parents=True, exist_ok=True)

        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"urls": urls, "ports": ports, "spec": self._spec()},
                                               indent=2))
        try:
            for component in COMPONENTS:
                if component.name in binaries:
                    self._popens[component.name] = start_process(
                        [binaries[component.name], *argv[component.name]],
                        self.workdir / "logs" / f"{component.name}.log",
                        self._pid_file(component.name), self.workdir)
            if wait:
                self._wait_ready(urls, timeout)
        except BaseException:
            self._stop_all()  # we hold the lock already
            raise
        return self

    def _wait_ready(self, urls: dict[str, str], timeout: float) -> None:
        for component in COMPONENTS:
            if component.name not in urls:
                continue
            pid_file, log = self._pid_file(component.name), self.workdir / "logs" / f"{component.name}.log"

            def ready() -> bool:
                if pid_file.process() is None:
                    raise StackError(f"{component.name} exited while starting; its log "
                                     f"({log}) ends with:\n{log_tail(log)}")
                return http_ok(urls[component.name] + component.ready_path)
            if not wait_until(ready, timeout):
                raise StackError(f"{component.name} did not become ready at {urls[component.name]} "
                                 f"within {timeout:g} s; its log ({log}) ends with:\n{log_tail(log)}")

    def _render(self, ports: dict[str, int], node_exporter: bool) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        rule_paths = []
        for source in RULE_FILES:
            target = self.config_dir / source.name
            target.write_text(dump_yaml(render_rules(load_yaml(source), self.fast), source))
            rule_paths.append(target)
        prometheus = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=ports, rule_files=rule_paths,
                                       app_jobs=self.app_jobs, node_exporter=node_exporter,
                                       fast=self.fast)
        (self.config_dir / "prometheus.yml").write_text(dump_yaml(prometheus, PROMETHEUS_FILE))
        extra = [self.extra_receiver_url] if self.extra_receiver_url else []
        alertmanager = render_alertmanager(load_yaml(ALERTMANAGER_FILE), self.settings,
                                           extra_webhook_urls=extra, local=True, fast=self.fast)
        write_private(self.config_dir / "alertmanager.yml", dump_yaml(alertmanager, ALERTMANAGER_FILE))


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read: a rendered Alertmanager config may hold secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


# The prom/alertmanager image runs as nobody:nogroup.
ALERTMANAGER_CONTAINER_UID = 65534


def _give_to_container_user(path: Path) -> str:
    """Makes a rendered config readable by the Alertmanager container's user and by nobody else
    (it may hold receiver secrets): owned by that user, mode 600. Needs root; otherwise says how."""
    try:
        os.chown(path, ALERTMANAGER_CONTAINER_UID, ALERTMANAGER_CONTAINER_UID)
        return f", owned by uid {ALERTMANAGER_CONTAINER_UID}, the Alertmanager container's user"
    except PermissionError:
        print(f"note: the Alertmanager container runs as uid {ALERTMANAGER_CONTAINER_UID} and cannot "
              f"read {path} (mode 600, yours). Run `sudo chown {ALERTMANAGER_CONTAINER_UID} {path}` "
              "before `docker compose up`; mode 600 keeps everyone else out.", file=sys.stderr)
        return ""


# --- CLI -----------------------------------------------------------------------------------------

def _parser(settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python m2_3_stack.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def workdir(p):
        p.add_argument("--workdir", default=settings.STACK_DIR,
                       help=f"where configs, data, logs and pid files go (default: STACK_DIR={settings.STACK_DIR})")

    up = sub.add_parser("up", help="start the stack and print its URLs")
    workdir(up)
    up.add_argument("--fast", action="store_true",
                    help="1 s scrapes, short windows and `for`: alerts fire in seconds (teaching, tests)")
    up.add_argument("--app-target", action="append", metavar="HOST:PORT",
                    help=f"the app's /metrics address; repeat for replicas "
                         f"(default: 127.0.0.1:METRICS_PORT={settings.METRICS_PORT})")
    for name, setting in PORT_SETTINGS.items():
        up.add_argument("--" + name.replace("_", "-") + "-port", type=int, dest=f"{name}_port",
                        metavar="N", help=f"default: {setting}={getattr(settings, setting)}; 0 picks a free port")
    up.add_argument("--no-node-exporter", action="store_true", help="do not start node-exporter")
    up.add_argument("--webhook-url", help="also send every alert to this webhook")

    for name, text in (("down", "stop the stack (by the PIDs recorded by up)"),
                       ("status", "show what is running (exit code 3 if anything is stopped)")):
        workdir(sub.add_parser(name, help=text))

    hook = sub.add_parser("webhook", help="receive Alertmanager notifications and print them")
    hook.add_argument("--port", type=int, default=5001, help="port on 127.0.0.1 (default: 5001, "
                      "the URL in alertmanager.yml)")

    render = sub.add_parser("render-alertmanager",
                            help="write alertmanager.yml with the receivers configured in .env")
    render.add_argument("--out", default="alertmanager.local.yml",
                        help="output file (default: alertmanager.local.yml, git-ignored; point "
                             "ALERTMANAGER_CONFIG at it for docker compose)")
    render.add_argument("--local", action="store_true",
                        help="rewrite host.docker.internal to 127.0.0.1 (not for Docker)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..settings import settings_for_cli
    settings = settings_for_cli()
    args = _parser(settings).parse_args(argv)
    try:
        if args.command == "up":
            ports = {name: getattr(args, f"{name}_port") for name in PORT_SETTINGS
                     if getattr(args, f"{name}_port") is not None}
            stack = Stack(args.workdir, app_targets=args.app_target, fast=args.fast, ports=ports,
                          extra_receiver_url=args.webhook_url, settings=settings,
                          node_exporter=not args.no_node_exporter)
            stack.up()
            print(f"Monitoring stack up{' (fast mode)' if args.fast else ''}, data in {stack.workdir}")
            for name, url in stack.urls.items():
                print(f"  {name:14} {url}")
            if "node_exporter" not in stack.urls and not args.no_node_exporter:
                print("  node_exporter  not installed: host panels and alerts stay empty "
                      "(sudo apt-get install prometheus-node-exporter)")
            print(f"Scraping {', '.join(t for ts in stack.app_jobs.values() for t in ts)}. "
                  "Stop with: python m2_3_stack.py down")
            return 0
        if args.command == "down":
            stopped = Stack(args.workdir, settings=settings).down()
            names = [name for name, was in stopped.items() if was]
            print(f"stopped {', '.join(names)}" if names else "nothing was running")
            return 0
        if args.command == "status":
            stack = Stack(args.workdir, settings=settings)
            status, urls = stack.status(), stack.urls
            for name, running in status.items():
                print(f"  {name:14} {'running' if running else 'stopped'}  {urls.get(name, '')}".rstrip())
            expected = set(urls) or {c.name for c in COMPONENTS if c.required}
            return 0 if all(status[name] for name in expected) else 3
        if args.command == "webhook":
            return _run_webhook(args.port)
        if args.command == "render-alertmanager":
            from .render import configured_integrations
            config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), settings, local=args.local)
            write_private(Path(args.out), dump_yaml(config, ALERTMANAGER_FILE))
            owner = "" if args.local else _give_to_container_user(Path(args.out))
            print(f"wrote {args.out} (mode 600{owner}):")
            for receiver, kinds in configured_integrations(config).items():
                print(f"  {receiver:8} {', '.join(kinds) or '(no integrations)'}")
            return 0
    except (StackError, StackConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


def _run_webhook(port: int) -> int:
    from .webhook import WebhookReceiver

    def show(alert: dict) -> None:
        labels, notes = alert.get("labels", {}), alert.get("annotations", {})
        print(f"{alert.get('status', '?').upper():8} {labels.get('alertname')} "
              f"severity={labels.get('severity')} job={labels.get('job')}: "
              f"{notes.get('summary', '')}", flush=True)

    try:
        receiver = WebhookReceiver(port=port, on_alert=show)
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{port}: {exc.strerror}; choose another --port",
              file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with receiver:
        print(f"Receiving alerts at {receiver.url} (Ctrl-C stops)", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
