"""docker-compose.monitoring.yml, read with PyYAML (no Docker engine here): loopback-only ports,
no default password, named data volumes, every mounted file present, the app reachable as
host.docker.internal, and the mounts matching what prometheus.yml loads."""
from __future__ import annotations

import re

import pytest

from tests.stack_promql import WORKSPACE, load_yaml

COMPOSE = load_yaml(WORKSPACE / "docker-compose.monitoring.yml")
SERVICES = COMPOSE["services"]
# Host paths node-exporter must read to report on the host (read-only bind mounts).
HOST_PATHS = {"/"}


def interpolate_default(text: str) -> str:
    """${VAR:-default} -> default, as compose does when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def mounts(service: str) -> list[tuple[str, str, str]]:
    out = []
    for volume in SERVICES[service].get("volumes", []):
        parts = interpolate_default(volume).split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def test_the_stack_has_the_five_services():
    assert set(SERVICES) == {"prometheus", "grafana", "alertmanager", "node-exporter", "pushgateway"}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_ports_are_published_on_loopback_only(service):
    for port in SERVICES[service].get("ports", []):
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{service}: {port}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_images_are_pinned(service):
    image = SERVICES[service]["image"]
    assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{service}: pin a version, not {image}"


def test_grafana_password_comes_from_env_without_a_default():
    env = SERVICES["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    assert ":-" not in password
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_data_lives_in_named_volumes():
    declared = set(COMPOSE["volumes"])
    named = {source for service in SERVICES for source, _t, _m in mounts(service)
             if not source.startswith(("/", "."))}
    assert named == declared == {"prometheus_data", "alertmanager_data", "pushgateway_data", "grafana_data"}
    data_dirs = {"prometheus": "/prometheus", "alertmanager": "/alertmanager",
                 "pushgateway": "/data", "grafana": "/var/lib/grafana"}
    for service, target in data_dirs.items():
        assert any(t == target and s in declared for s, t, _m in mounts(service)), service


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_bind_mounts_exist_and_are_read_only(service):
    for source, target, mode in mounts(service):
        if source.startswith("./"):
            assert (WORKSPACE / source).exists(), f"{service} mounts {source}, which does not exist"
            assert mode.startswith("ro"), f"{service}: mount {source} read-only"
        elif source.startswith("/"):
            assert source in HOST_PATHS and mode.startswith("ro"), f"{service}: {source}:{mode}"


def test_prometheus_mounts_its_config_and_every_rule_file_beside_it():
    config = load_yaml(WORKSPACE / "prometheus.yml")
    targets = {target: source for source, target, _m in mounts("prometheus")}
    assert targets["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    for rule_file in config["rule_files"]:
        assert targets[f"/etc/prometheus/{rule_file}"] == f"./{rule_file}"
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_prometheus_in_compose_keeps_exemplars_like_the_local_stack():
    from ragmon.stack.runner import Stack
    import inspect
    assert "--enable-feature=exemplar-storage" in inspect.getsource(Stack)
    assert "--enable-feature=exemplar-storage" in SERVICES["prometheus"]["command"]


def test_compose_names_match_the_scrape_targets():
    config = load_yaml(WORKSPACE / "prometheus.yml")
    hosts = {t.split(":")[0] for job in config["scrape_configs"] for s in job["static_configs"]
             for t in s["targets"]}
    assert hosts - {"localhost", "host.docker.internal"} <= set(SERVICES)
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]


@pytest.mark.parametrize("service", ["prometheus", "alertmanager"])
def test_containers_reach_the_host_through_host_gateway(service):
    assert "host.docker.internal:host-gateway" in SERVICES[service]["extra_hosts"]


def test_alertmanager_config_is_replaceable_by_a_rendered_copy():
    volume = next(v for v in SERVICES["alertmanager"]["volumes"] if "alertmanager.yml" in v)
    assert volume.startswith("${ALERTMANAGER_CONFIG:-./alertmanager.yml}:")
