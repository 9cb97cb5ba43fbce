"""deploy/compose: what `docker compose up` would run, put through the real command
line: the certs service's command for real, each coordinator's `concord serve` with its
environment and mounts (its config accepted, its certificate found), the image's health
check as each coordinator, the agents' commands through deploy/agent.py's parser, and
ports and names that agree with each other and with Prometheus."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    DEPLOY,
    REPO,
    STRONG_SECRET,
    Machine,
    concord_args,
    dockerfile,
    exec_form,
    host_port,
    interpolate,
    load_agent,
    load_yaml,
    node_settings,
    run_concord,
)

COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
HOST_ENV = {"CONCORD_SECRET": STRONG_SECRET}  # deploy/compose/.env, as the header says


def _compose() -> dict[str, Any]:
    (document,) = load_yaml(COMPOSE)
    assert isinstance(document, dict)
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _image_entrypoint() -> list[str]:
    (entrypoint,) = [exec_form(a) for i, a in dockerfile() if i == "ENTRYPOINT"]
    return entrypoint


def _argv(service: dict[str, Any]) -> list[str]:
    entrypoint = service.get("entrypoint", _image_entrypoint())
    command = service.get("command", [])
    assert isinstance(entrypoint, list) and isinstance(command, list), service
    return [*entrypoint, *command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v), HOST_ENV) for k, v in service.get("environment", {}).items()}


def _coordinators() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if _argv(s)[:2] == ["concord", "serve"]}


def _machine(tmp_path: Path, name: str, service: dict[str, Any]) -> Machine:
    """The service's container: named volumes shared between services, bind mounts
    the files next to the compose file."""
    machine = Machine(tmp_path / "containers" / name)
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            here = (COMPOSE.parent / source).resolve()
            assert here.exists(), f"{name}: mounts {source}, which is not in deploy/compose"
        else:
            assert source in _compose()["volumes"], f"{name}: volume {source} is not declared"
            here = tmp_path / "volumes" / source
            here.mkdir(parents=True, exist_ok=True)
        machine.mount(target, here)
    return machine


@pytest.fixture
def certs_made(tmp_path: Path) -> Path:
    """The certs service run for real, into its volume."""
    certs = _services()["certs"]
    argv = _argv(certs)
    assert argv[:3] == ["concord", "certs", "init"], argv
    concord_args(argv[1:])
    run_concord(argv[1:], _machine(tmp_path, "certs", certs))
    return tmp_path


def test_the_file_parses_and_has_three_coordinators_two_agents_and_prometheus() -> None:
    services = _services()
    assert sorted(_coordinators()) == ["c1", "c2", "c3"]
    agents = [n for n, s in services.items() if "/opt/concord/agent.py" in _argv(s)]
    assert sorted(agents) == ["agent1", "agent2"]
    assert "prometheus" in services


def test_each_coordinator_runs_as_serve_would_with_its_environment_and_mounts(
    certs_made: Path,
) -> None:
    for name, service in _coordinators().items():
        args = concord_args(_argv(service)[1:])
        machine = _machine(certs_made, name, service)
        node = node_settings(args, _environment(service), machine)
        assert node.node_id == name == service["hostname"]
        assert host_port(node.grpc)[0] == host_port(node.raft)[0] == name
        assert node.tls.identity is not None and node.tls.identity.name == name
        assert {p.node_id for p in node.peers} == set(_coordinators()) - {name}
        # the data dir is in the service's own volume, not in the container's layer
        data_volume = next(v for v in service["volumes"] if v.startswith(f"{name}-data:"))
        assert str(node.data_dir).startswith(str(machine.path(data_volume.split(":")[1])))
        # what concord status and friends dial from inside, and what the others dial
        dialled = _environment(service)["CONCORD_COORDINATORS"].split(",")
        grpc = sorted(_environment(s)["CONCORD_GRPC"] for s in _coordinators().values())
        assert sorted(dialled) == grpc


def test_the_image_health_check_is_concord_health_as_each_coordinator(certs_made: Path) -> None:
    (check,) = [a for i, a in dockerfile() if i == "HEALTHCHECK"]
    argv = exec_form(check.split("CMD", 1)[1].strip())
    assert argv[:2] == ["concord", "health"], argv
    for name, service in _coordinators().items():
        args = concord_args(argv[1:])
        node = node_settings(args, _environment(service), _machine(certs_made, name, service))
        assert node.node_id == name


def test_the_new_cluster_switch_is_off_unless_asked_for(certs_made: Path) -> None:
    for name, service in _coordinators().items():
        machine = _machine(certs_made, name, service)
        args = concord_args(_argv(service)[1:])
        assert not node_settings(args, _environment(service), machine).new_cluster
        first = {**_environment(service), "CONCORD_NEW_CLUSTER": "true"}
        assert node_settings(concord_args(_argv(service)[1:]), first, machine).new_cluster


def test_the_agents_run_deploy_agent_with_certificates_and_addresses_that_agree() -> None:
    agent = load_agent()

    (copy,) = [a for i, a in dockerfile() if i == "COPY" and a.endswith("/opt/concord/agent.py")]
    assert (REPO / copy.split()[0]).exists(), copy
    participants = _certs_flag("--participants")
    for name, service in _services().items():
        argv = _argv(service)
        if "/opt/concord/agent.py" not in argv:
            continue
        assert argv[:2] == ["python", "/opt/concord/agent.py"], argv
        try:
            args = agent.build_parser().parse_args(argv[2:])
        except agent.UsageError as error:
            pytest.fail(f"{name}: {shlex.join(argv)}: {error}")
        assert args.command == "serve" and args.id == name == service["hostname"]
        assert args.id in participants, f"{name} has no participant certificate"
        listen, advertise = host_port(args.listen), host_port(args.advertise)
        assert listen == ("0.0.0.0", advertise[1]) and advertise[0] == name
        environ = _environment(service)
        assert environ["CONCORD_TLS_DIR"] in [v.split(":")[1] for v in service["volumes"]]
        grpc = sorted(_environment(s)["CONCORD_GRPC"] for s in _coordinators().values())
        assert sorted(environ["CONCORD_COORDINATORS"].split(",")) == grpc


def _certs_flag(flag: str) -> list[str]:
    argv = _argv(_services()["certs"])
    return argv[argv.index(flag) + 1].split(",")


def test_certificates_are_made_for_exactly_the_coordinators() -> None:
    assert sorted(_certs_flag("--nodes")) == sorted(_coordinators())


def test_prometheus_scrapes_each_coordinators_metrics(certs_made: Path) -> None:
    prometheus = _services()["prometheus"]
    (config_mount,) = [v for v in prometheus["volumes"] if "prometheus.yml" in v]
    (scrape,) = load_yaml((COMPOSE.parent / config_mount.split(":")[0]).resolve())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert config_mount.split(":")[1] in " ".join(prometheus["command"])
    expected = set()
    for name, service in _coordinators().items():
        node = node_settings(
            concord_args(_argv(service)[1:]),
            _environment(service),
            _machine(certs_made, name, service),
        )
        assert node.metrics is not None, f"{name} serves no metrics"
        expected.add(f"{name}:{host_port(node.metrics)[1]}")
    assert targets == expected


def test_published_ports_are_the_grpc_ports() -> None:
    for name, service in _coordinators().items():
        grpc_port = host_port(_environment(service)["CONCORD_GRPC"])[1]
        published = [int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])]
        assert published == [grpc_port], name
