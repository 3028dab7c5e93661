"""The monitoring stack without Docker: Prometheus, Alertmanager, Pushgateway (and node-exporter
where installed) from the Debian binaries, on 127.0.0.1, with their data under STACK_DIR.

    python m2_3_stack.py up [--fast] [--ha] [--app-target 127.0.0.1:8000 ...] [--prometheus-port N ...]
    python m2_3_stack.py status [--json]
    python m2_3_stack.py targets [--add HOST:PORT] [--remove HOST:PORT]   # replicas, no restart
    python m2_3_stack.py down
    python m2_3_stack.py webhook [--port 5001]          # print alerts Alertmanager sends
    python m2_3_stack.py render-alertmanager [--out F]  # alertmanager.yml + receivers from .env
    python m2_3_stack.py kubernetes [--out DIR]         # prometheus-operator manifests

It runs the SAME prometheus.yml jobs and rule files as docker-compose.monitoring.yml, rendered
with the targets rewritten for loopback (ragmon/stack/render.py). `--fast` renders teaching/test
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
from pathlib import Path
from typing import Mapping

import yaml

from ..checks import check_port
from .api import AlertmanagerAPI, PrometheusAPI, http_ok
from .process import (ALL_COMPONENTS, COMPONENTS, HA_COMPONENTS, INSTALL_COMMAND, Component,
                      OwnedProcess, PidFile, StackError, find_binary, free_port, log_tail,
                      missing_binary_error, port_in_use, start_process, stop_process, wait_until)
from .render import (ALERTMANAGER_FILE, PROMETHEUS_FILE, RULE_FILES, VICTORIA_METRICS_RELABEL,
                     StackConfigError, app_job_names, dump_yaml, load_yaml, normalise_app_jobs,
                     render_alertmanager, render_ha_prometheus, render_prometheus, render_rules,
                     render_targets, targets_file, webhook_credentials)

__all__ = ["Stack", "StackError", "StackConfigError", "INSTALL_COMMAND", "main"]

PORT_SETTINGS = {"prometheus": "PROMETHEUS_PORT", "alertmanager": "ALERTMANAGER_PORT",
                 "pushgateway": "PUSHGATEWAY_PORT", "node_exporter": "NODE_EXPORTER_PORT"}
HA_PORT_NAMES = tuple(c.name for c in HA_COMPONENTS)
REPLICAS = {"prometheus": "a", "prometheus_2": "b"}  # component -> its `replica` external label
ALERTMANAGER_PEERS = ("alertmanager", "alertmanager_2")
# VictoriaMetrics keeps one sample per this interval of each series (the scrape interval): the
# two replicas' copies of a sample collapse into one.
DEDUP_INTERVAL = {True: "1s", False: "15s"}
STOP_ORDER = tuple(sorted(ALL_COMPONENTS, key=lambda c: c.name not in REPLICAS))


class Stack:
    """The local monitoring stack in `workdir` (default: STACK_DIR).

    app_targets: HOST:PORT list for the shipped app job ("rag-service"), or {job: [HOST:PORT]} to
        scrape several apps as separate jobs (alerts aggregate by job). Default: the app on
        127.0.0.1:METRICS_PORT. Prometheus discovers them from file_sd files the stack keeps
        under workdir/config/targets: set_targets()/add_target()/remove_target() change them
        while Prometheus runs, without a restart.
    ports: {"prometheus", "alertmanager", "pushgateway", "node_exporter"} -> port (and, with ha,
        "prometheus_2", "alertmanager_2", "victoria_metrics"); missing keys come from settings
        (PROMETHEUS_PORT, ...), 0 picks a free port (the HA extras default to 0).
    fast: short intervals, windows and `for` (tests, teaching).
    ha: two Prometheus replicas (external label `replica`), two Alertmanager peers clustered over
        gossip on 127.0.0.1, and VictoriaMetrics receiving remote write from both replicas with
        deduplication.
    extra_receiver_url: a webhook that receives every alert, besides the configured receivers.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, app_targets=None, fast: bool = False,
                 ports: Mapping[str, int] | None = None, *, extra_receiver_url: str | None = None,
                 settings=None, node_exporter: bool = True, search_path: str | None = None,
                 ha: bool = False):
        if settings is None:
            from ..settings import get_settings
            settings = get_settings()
        self.settings = settings
        self.workdir = Path(workdir if workdir is not None else settings.STACK_DIR).expanduser().resolve()
        if app_targets is None:
            app_targets = [f"127.0.0.1:{settings.METRICS_PORT}"]
        self.app_jobs = normalise_app_jobs(app_targets)
        self.fast = bool(fast)
        self.ha = bool(ha)
        known = set(PORT_SETTINGS) | (set(HA_PORT_NAMES) if self.ha else set())
        unknown = set(ports or {}) - known
        if unknown:
            raise ValueError(f"ports has unknown key(s) {sorted(unknown)}; expected some of "
                             f"{sorted(known)}")
        self.requested_ports = {name: int(getattr(settings, setting))
                                for name, setting in PORT_SETTINGS.items()}
        self.requested_ports.update({name: 0 for name in HA_PORT_NAMES})
        for name, port in (ports or {}).items():
            self.requested_ports[name] = check_port(f"ports[{name!r}]", port)
        self.extra_receiver_url = extra_receiver_url
        self.node_exporter = node_exporter
        self.search_path = search_path
        self._owned: dict[str, OwnedProcess] = {}
        self._lock = threading.RLock()

    # --- paths -----------------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.workdir / "config"

    @property
    def targets_dir(self) -> Path:
        return self.config_dir / "targets"

    def _pid_file(self, name: str) -> PidFile:
        return PidFile(self.workdir / "run" / f"{name}.pid")

    def _log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    @property
    def _state_file(self) -> Path:
        return self.workdir / "run" / "stack.json"

    def _state(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def components(self) -> tuple[Component, ...]:
        return ALL_COMPONENTS if self.ha else COMPONENTS

    # --- public API ------------------------------------------------------------------------------
    @property
    def urls(self) -> dict[str, str]:
        """name -> base URL of each component started (node_exporter absent if not running)."""
        return dict(self._state().get("urls", {}))

    @property
    def ports(self) -> dict[str, int]:
        return dict(self._state().get("ports", {}))

    def status(self) -> dict[str, bool]:
        """name -> running, for every component of the stack (the HA ones when it runs them)."""
        started = set(self._state().get("urls", {}))
        names = [c.name for c in COMPONENTS] + [c.name for c in HA_COMPONENTS
                                                if self.ha or c.name in started]
        return {name: self._pid_file(name).process() is not None for name in names}

    def describe(self) -> list[dict]:
        """Every component with its URL, PID, whether it runs and whether it answers its health
        endpoint: what `status --json` prints for scripts and the notebook."""
        urls = self.urls
        out = []
        for component in ALL_COMPONENTS:
            if component.name not in urls and component in HA_COMPONENTS:
                continue
            process = self._pid_file(component.name).process()
            url = urls.get(component.name)
            out.append({"name": component.name, "url": url, "pid": process.pid if process else None,
                        "running": process is not None,
                        "healthy": bool(process and url and http_ok(url + component.ready_path)),
                        **({"replica": REPLICAS[component.name]}
                           if component.name in REPLICAS and "prometheus_2" in urls else {})})
        return out

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
        for component in STOP_ORDER:  # Prometheus first: it stops sending alerts
            if component in HA_COMPONENTS and not self._pid_file(component.name).path.exists() \
                    and component.name not in self._owned:
                continue
            stopped[component.name] = stop_process(self._pid_file(component.name),
                                                   self._owned.pop(component.name, None))
        # the stack's own webhook receiver, last: Alertmanager may still deliver until it stops
        if self._pid_file(RECEIVER).path.exists() or RECEIVER in self._owned:
            stopped[RECEIVER] = stop_process(self._pid_file(RECEIVER), self._owned.pop(RECEIVER, None))
        self._state_file.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> "Stack":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def api(self, name: str = "prometheus") -> PrometheusAPI:
        """The query API of a running component: prometheus, prometheus_2, victoria_metrics."""
        return PrometheusAPI(self._url(name))

    def alertmanager(self, name: str = "alertmanager") -> AlertmanagerAPI:
        return AlertmanagerAPI(self._url(name))

    def _url(self, name: str) -> str:
        base = self.urls.get(name)
        if not base:
            raise StackError(f"{name} of the stack in {self.workdir} is not running; call up() "
                             f"first{' with ha=True' if name in HA_PORT_NAMES else ''}")
        return base

    def query(self, expr: str, timeout: float = 10.0) -> list[dict]:
        """Runs an instant PromQL query on Prometheus; returns the `result` list (raises
        StackError on errors)."""
        api = self.api("prometheus")
        api.timeout = timeout
        return api.query(expr)

    # --- app targets (file_sd) -------------------------------------------------------------------
    def targets(self, job: str | None = None) -> list[str]:
        """The HOST:PORT targets Prometheus is told to scrape for `job` (default: the app job)."""
        path = targets_file(self.targets_dir, self._app_job(job))
        try:
            return [t for group in json.loads(path.read_text()) for t in group["targets"]]
        except (OSError, ValueError):
            return []

    def set_targets(self, targets, job: str | None = None) -> None:
        """Replaces the targets of an app job; Prometheus picks the file up within seconds (5 s
        in fast mode), no restart."""
        self._write_targets(self._app_job(job), targets)

    def add_target(self, target: str, job: str | None = None) -> None:
        self.set_targets([*self.targets(job), target], job)

    def remove_target(self, target: str, job: str | None = None) -> None:
        self.set_targets([t for t in self.targets(job) if t != target], job)

    def _app_job(self, job: str | None) -> str:
        jobs = self._state().get("app_job_names") or []
        if not jobs:
            raise StackError(f"the stack in {self.workdir} is not running; start it with "
                             f"`python m2_3_stack.py up --workdir {self.workdir}` or Stack.up()")
        if job is None:
            return jobs[0]
        if job not in jobs:
            raise ValueError(f"job={job!r} is not an app job of this stack; expected one of {jobs}")
        return job

    # --- one component ---------------------------------------------------------------------------
    def stop_component(self, name: str, timeout: float = 10.0) -> bool:
        """Stops one component by PID (e.g. one replica, to prove the other carries on)."""
        with self._lock:
            self._known(name)
            return stop_process(self._pid_file(name), self._owned.pop(name, None), timeout)

    def start_component(self, name: str, wait: bool = True, timeout: float = 60.0) -> None:
        """Starts one stopped component again with the same command line, ports and data."""
        with self._lock:
            argv = self._known(name)
            if self._pid_file(name).process() is not None:
                return
            self._owned[name] = start_process(argv, self._log(name), self._pid_file(name),
                                              self.workdir)
            if wait:
                self._wait_ready({name: self.urls[name]}, timeout)

    def _known(self, name: str) -> list[str]:
        argv = self._state().get("argv", {}).get(name)
        if not argv:
            raise ValueError(f"{name!r} is not a component of the running stack in {self.workdir}; "
                             f"expected one of {sorted(self._state().get('argv', {}))}")
        return argv

    # --- internals -------------------------------------------------------------------------------
    def _spec(self) -> dict:
        return {"app_jobs": {str(k): v for k, v in (self.app_jobs or {}).items()}, "fast": self.fast,
                "extra_receiver_url": self.extra_receiver_url, "ha": self.ha,
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
        for component in self.components:
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
            if port_in_use(port) or port in ports.values():
                flag = "--" + name.replace("_", "-") + "-port"
                setting = f"{PORT_SETTINGS[name]}=... in .env or " if name in PORT_SETTINGS else ""
                raise StackError(f"port {port} for {name} on 127.0.0.1 is already in use. Stop "
                                 f"what uses it, or choose another port: {setting}{flag} N")
            ports[name] = port
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        # Alertmanager peers gossip on ports of their own (never opened without --ha).
        cluster_ports = {name: free_port() for name in ALERTMANAGER_PEERS if self.ha}

        # Notifications go to a webhook receiver the stack runs itself unless ALERT_WEBHOOK_URL
        # names one: a fresh stack must not page about its own undeliverable notifications.
        own_receiver = not self.settings.ALERT_WEBHOOK_URL.strip()
        receiver_port = free_port() if own_receiver else None
        receiver_url = f"http://127.0.0.1:{receiver_port}" if own_receiver else None
        app_jobs = self._render(ports, node_exporter="node_exporter" in binaries,
                                local_receiver=receiver_url)
        argv = {name: [binaries[name], *self._argv(name, ports, cluster_ports)] for name in binaries}
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"urls": urls, "ports": ports, "spec": self._spec(),
                                                "cluster_ports": cluster_ports, "argv": argv,
                                                "app_job_names": app_jobs,
                                                "receiver_url": receiver_url}, indent=2))
        try:
            if own_receiver:
                self._owned[RECEIVER] = start_process(
                    receiver_argv(receiver_port), self._log(RECEIVER), self._pid_file(RECEIVER),
                    self.workdir, env=receiver_env())
            for component in self.components:
                if component.name in binaries:
                    self._owned[component.name] = start_process(
                        argv[component.name], self._log(component.name),
                        self._pid_file(component.name), self.workdir)
            if wait:
                if own_receiver:
                    self._wait_receiver(receiver_port, timeout)
                self._wait_ready(urls, timeout)
        except BaseException:
            self._stop_all()  # we hold the lock already
            raise
        return self

    def _argv(self, name: str, ports: dict[str, int], cluster_ports: dict[str, int]) -> list[str]:
        data = self.workdir / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        listen = f"127.0.0.1:{ports[name]}"
        if name in REPLICAS:
            config = self.config_dir / ("prometheus.yml" if name == "prometheus" else f"{name}.yml")
            argv = [f"--config.file={config}", f"--storage.tsdb.path={data}",
                    f"--web.listen-address={listen}", "--web.enable-lifecycle",
                    # exemplars (trace and request ids on the latency histogram) are stored
                    "--enable-feature=exemplar-storage"]
            if self.fast:  # firing alerts re-sent every 2 s: a restarted peer learns them at once
                argv.append("--rules.alert.resend-delay=2s")
            return argv
        if name in ALERTMANAGER_PEERS:
            argv = [f"--config.file={self.config_dir / 'alertmanager.yml'}",
                    f"--storage.path={data}", f"--web.listen-address={listen}"]
            if not cluster_ports:
                # no gossip: a single local instance must not open a cluster port
                return argv + ["--cluster.listen-address="]
            own = f"127.0.0.1:{cluster_ports[name]}"
            argv += [f"--cluster.listen-address={own}", f"--cluster.advertise-address={own}"]
            argv += [f"--cluster.peer=127.0.0.1:{port}" for peer, port in cluster_ports.items()
                     if peer != name]
            if self.fast:  # gossip in well under the time the second peer waits before sending
                argv += ["--cluster.gossip-interval=100ms", "--cluster.pushpull-interval=2s",
                         "--cluster.peer-timeout=10s", "--cluster.settle-timeout=10s"]
            return argv
        if name == "victoria_metrics":
            argv = [f"-httpListenAddr={listen}", f"-storageDataPath={data}",
                    f"-dedup.minScrapeInterval={DEDUP_INTERVAL[self.fast]}",
                    f"-relabelConfig={self.config_dir / 'victoria-metrics-relabel.yml'}",
                    "-retentionPeriod=1y", "-loggerLevel=WARN"]
            if self.fast:  # answer with the last second's samples, not 30 s behind
                argv += ["-search.latencyOffset=1s", "-search.disableCache"]
            return argv
        if name == "pushgateway":
            return [f"--web.listen-address={listen}", f"--persistence.file={data / 'metrics.store'}"]
        if name == "node_exporter":
            return [f"--web.listen-address={listen}"]
        raise ValueError(f"unknown component {name!r}")

    @property
    def receiver_url(self) -> str | None:
        """Base URL of the webhook receiver the stack runs itself (None when ALERT_WEBHOOK_URL
        names another); it logs every notification to logs/webhook.log."""
        return self._state().get("receiver_url")

    def _wait_receiver(self, port: int, timeout: float) -> None:
        pid_file, log = self._pid_file(RECEIVER), self._log(RECEIVER)

        def listening() -> bool:
            if pid_file.process() is None:
                raise StackError(f"the stack's webhook receiver exited while starting; its log "
                                 f"({log}) ends with:\n{log_tail(log)}")
            return port_in_use(port)
        try:
            wait_until(listening, timeout, what="the webhook receiver to listen")
        except TimeoutError:
            raise StackError(f"the stack's webhook receiver did not listen on 127.0.0.1:{port} "
                             f"within {timeout:g} s; its log ({log}) ends with:\n"
                             f"{log_tail(log)}") from None

    def _wait_ready(self, urls: dict[str, str], timeout: float) -> None:
        for component in ALL_COMPONENTS:
            if component.name not in urls:
                continue
            pid_file, log = self._pid_file(component.name), self._log(component.name)

            def ready() -> bool:
                if pid_file.process() is None:
                    raise StackError(f"{component.name} exited while starting; its log "
                                     f"({log}) ends with:\n{log_tail(log)}")
                return http_ok(urls[component.name] + component.ready_path)
            try:
                wait_until(ready, timeout, what=f"{component.name} to become ready")
            except TimeoutError:
                raise StackError(f"{component.name} did not become ready at {urls[component.name]} "
                                 f"within {timeout:g} s; its log ({log}) ends with:\n"
                                 f"{log_tail(log)}") from None

    def _render(self, ports: dict[str, int], node_exporter: bool,
                local_receiver: str | None = None) -> list[str]:
        """Writes every config; returns the app job names (their targets are file_sd files)."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        rule_paths = []
        for source in RULE_FILES:
            target = self.config_dir / source.name
            target.write_text(dump_yaml(render_rules(load_yaml(source), self.fast), source))
            rule_paths.append(target)
        prometheus = render_prometheus(load_yaml(PROMETHEUS_FILE), ports=ports, rule_files=rule_paths,
                                       app_jobs=self.app_jobs, node_exporter=node_exporter,
                                       fast=self.fast, targets_dir=self.targets_dir)
        jobs = app_job_names(prometheus)
        shipped = load_yaml(PROMETHEUS_FILE)
        for job in jobs:  # the targets each app job starts with
            if self.app_jobs and None not in self.app_jobs:
                targets = self.app_jobs[job]
            elif self.app_jobs:
                targets = self.app_jobs[None]
            else:
                targets = [t.replace("host.docker.internal", "127.0.0.1")
                           for j in shipped["scrape_configs"] if j["job_name"] == job
                           for s in j.get("static_configs", []) for t in s["targets"]]
            self._write_targets(job, targets)
        if not self.ha:
            (self.config_dir / "prometheus.yml").write_text(dump_yaml(prometheus, PROMETHEUS_FILE))
        else:
            loopback = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
            for name, replica in REPLICAS.items():
                config = render_ha_prometheus(
                    prometheus, replica=replica,
                    prometheus_targets=[loopback[n] for n in REPLICAS],
                    alertmanager_targets=[loopback[n] for n in ALERTMANAGER_PEERS],
                    remote_write_url=f"http://{loopback['victoria_metrics']}/api/v1/write",
                    fast=self.fast)
                path = self.config_dir / ("prometheus.yml" if name == "prometheus" else f"{name}.yml")
                path.write_text(dump_yaml(config, PROMETHEUS_FILE))
            (self.config_dir / "victoria-metrics-relabel.yml").write_text(
                "# Generated by m2_3_stack.py: the HA pair's copies of a series become one.\n"
                + yaml.safe_dump(VICTORIA_METRICS_RELABEL, sort_keys=False))
        extra = [self.extra_receiver_url] if self.extra_receiver_url else []
        for name, token in webhook_credentials(self.settings).items():
            write_private(self.config_dir / name, token)
        alertmanager = render_alertmanager(load_yaml(ALERTMANAGER_FILE), self.settings,
                                           extra_webhook_urls=extra, local=True, fast=self.fast,
                                           ha=self.ha, local_receiver=local_receiver,
                                           credentials_dir=self.config_dir)
        write_private(self.config_dir / "alertmanager.yml", dump_yaml(alertmanager, ALERTMANAGER_FILE))
        return jobs

    def _write_targets(self, job: str, targets) -> None:
        path = targets_file(self.targets_dir, job)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")  # written whole, then renamed: never read half-written
        tmp.write_text(json.dumps(render_targets(targets), indent=1))
        os.replace(tmp, path)


# The stack's own webhook receiver (`m2_3_stack.py webhook`), known by this pid file name.
RECEIVER = "webhook"


def receiver_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "ragmon.stack.runner", "webhook", "--port", str(port)]


def receiver_env() -> dict[str, str]:
    """The environment of the receiver process: this ragmon importable whatever its cwd."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


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
    up.add_argument("--ha", action="store_true",
                    help="high availability: two Prometheus replicas, two clustered Alertmanager "
                         "peers and VictoriaMetrics receiving remote write from both (free ports)")
    up.add_argument("--webhook-url", help="also send every alert to this webhook")

    workdir(sub.add_parser("down", help="stop the stack (by the PIDs recorded by up)"))
    status = sub.add_parser("status", help="show what is running (exit code 3 if anything is stopped)")
    workdir(status)
    status.add_argument("--json", action="store_true",
                        help="every component with its url, pid, running and healthy, as JSON")

    targets = sub.add_parser("targets", help="show or change the app targets Prometheus scrapes "
                                             "(file_sd: no restart)")
    workdir(targets)
    targets.add_argument("--job", help="the app job (default: the first one)")
    targets.add_argument("--add", action="append", default=[], metavar="HOST:PORT")
    targets.add_argument("--remove", action="append", default=[], metavar="HOST:PORT")

    kube = sub.add_parser("kubernetes", help="write the prometheus-operator manifests "
                                             "(ServiceMonitor, PrometheusRule from the rule files, "
                                             "Deployment, Service)")
    kube.add_argument("--out", default=None, help="directory (default: deploy/kubernetes)")

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
                          node_exporter=not args.no_node_exporter, ha=args.ha)
            stack.up()
            mode = ", ".join(m for m, on in (("high availability", args.ha), ("fast mode", args.fast)) if on)
            print(f"Monitoring stack up{f' ({mode})' if mode else ''}, data in {stack.workdir}")
            for name, url in stack.urls.items():
                print(f"  {name:16} {url}")
            if stack.receiver_url:
                print(f"  {'webhook':16} {stack.receiver_url}/alerts  (notifications logged to "
                      f"{stack.workdir / 'logs' / 'webhook.log'}; ALERT_WEBHOOK_URL replaces it)")
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
            if args.json:
                components = stack.describe()
                print(json.dumps({"workdir": str(stack.workdir), "components": components}, indent=2))
                expected = [c for c in components if c["url"]] or \
                    [c for c in components if c["name"] in {c.name for c in COMPONENTS if c.required}]
                return 0 if all(c["running"] and c["healthy"] for c in expected) else 3
            status, urls = stack.status(), stack.urls
            for name, running in status.items():
                print(f"  {name:16} {'running' if running else 'stopped'}  {urls.get(name, '')}".rstrip())
            expected = set(urls) or {c.name for c in COMPONENTS if c.required}
            return 0 if all(status[name] for name in expected) else 3
        if args.command == "targets":
            stack = Stack(args.workdir, settings=settings)
            for target in args.add:
                stack.add_target(target, args.job)
            for target in args.remove:
                stack.remove_target(target, args.job)
            print("\n".join(stack.targets(args.job)) or "(no targets)")
            return 0
        if args.command == "kubernetes":
            from .kubernetes import OUTPUT_DIR, write_manifests
            for path in write_manifests(Path(args.out) if args.out else OUTPUT_DIR):
                print(f"wrote {path}")
            return 0
        if args.command == "webhook":
            return _run_webhook(args.port)
        if args.command == "render-alertmanager":
            from .render import configured_integrations
            # token files beside the config; for Docker, mount them at the same path
            credentials_dir = Path(args.out).resolve().parent
            for name, token in webhook_credentials(settings).items():
                write_private(credentials_dir / name, token)
            config = render_alertmanager(load_yaml(ALERTMANAGER_FILE), settings, local=args.local,
                                         credentials_dir=credentials_dir)
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
