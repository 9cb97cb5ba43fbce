"""deploy/systemd and deploy/Dockerfile: the unit's ExecStart with its Environment and
EnvironmentFile is a node `concord serve` accepts (for each host, given its own
node.env); the image is multi-stage, not root, keeps its state in a volume, checks
health through `concord health`, installs an extra that exists and copies files that
exist; the ports it exposes are the ones the configs use."""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

from coordinator.security.certs import init_dir
from coordinator.security.identity import Identity, Role
from tests.deploy.conftest import (
    DEPLOY,
    REPO,
    STRONG_SECRET,
    Machine,
    concord_args,
    dockerfile,
    env_file,
    exec_form,
    host_port,
    load_yaml,
    node_settings,
    systemd_unit,
)

SYSTEMD = DEPLOY / "systemd"


def _host(tmp_path: Path, node_id: str) -> tuple[Machine, dict[str, str], list[str]]:
    """A host of the systemd deployment: /etc/concord as the unit's header lays it out
    (the shared concord.toml, this host's node.env, the secret, the certificates)."""
    unit = systemd_unit(SYSTEMD / "concord.service")["Service"]
    machine = Machine(tmp_path / node_id)
    environ = dict(v.split("=", 1) for v in unit["Environment"])
    (env_path,) = unit["EnvironmentFile"]
    shared = tomllib.loads((SYSTEMD / "concord.toml").read_text())
    members = {p.split("=")[0]: p.split("=")[1].split(",") for p in shared["peers"]}
    example = env_file(SYSTEMD / Path(env_path).name)  # node.env of host c1
    own = {
        "CONCORD_NODE_ID": node_id,
        "CONCORD_RAFT": members[node_id][0],
        "CONCORD_GRPC": members[node_id][1],
    }
    assert set(example) == set(own), "node.env gives other settings than a host's own"
    if node_id == example["CONCORD_NODE_ID"]:
        assert example == own
    environ.update(own)
    config = machine.path(environ["CONCORD_CONFIG"])
    config.parent.mkdir(parents=True)
    config.write_text((SYSTEMD / "concord.toml").read_text())
    secret = machine.path(shared["secret_file"])
    secret.write_text(STRONG_SECRET)
    secret.chmod(0o600)
    nodes = [Identity("concord", Role.NODE, n) for n in members]
    init_dir(machine.path(shared["tls_dir"]), "concord", nodes)
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "concord", argv
    return machine, environ, argv[1:]


def test_the_unit_runs_a_node_serve_accepts_on_each_host(tmp_path: Path) -> None:
    shared = tomllib.loads((SYSTEMD / "concord.toml").read_text())
    unit = systemd_unit(SYSTEMD / "concord.service")
    service = unit["Service"]
    assert service["User"] == ["concord"] and "multi-user.target" in unit["Install"]["WantedBy"]
    # StateDirectory=concord: systemd makes /var/lib/concord, the concord user's own
    assert Path(shared["data_dir"]).parent == Path("/var/lib") / service["StateDirectory"][0]
    assert any(shared["data_dir"].startswith(p) for p in service["ReadWritePaths"])
    for peer in shared["peers"]:
        node_id = peer.split("=")[0]
        machine, environ, argv = _host(tmp_path, node_id)
        node = node_settings(concord_args(argv), environ, machine)
        assert node.node_id == node_id and len(node.peers) == len(shared["peers"]) - 1
        assert node.tls.identity is not None and node.tls.identity.name == node_id
        health = node_settings(concord_args(["health"]), environ, machine)
        assert health.grpc == node.grpc


def test_the_image_is_multi_stage_not_root_with_a_volume_and_a_grpc_health_check() -> None:
    instructions = dockerfile()
    stages = [a for i, a in instructions if i == "FROM"]
    assert len(stages) >= 2 and " AS " in stages[0].upper(), stages
    build = stages[0].split()[-1]
    assert any(i == "COPY" and a.startswith(f"--from={build} ") for i, a in instructions)
    (user,) = [a for i, a in instructions if i == "USER"]
    assert user not in ("root", "0")
    (volume,) = [exec_form(a) for i, a in instructions if i == "VOLUME"]
    (env,) = [a for i, a in instructions if i == "ENV"]
    variables = dict(w.split("=", 1) for w in shlex.split(env))
    assert any(variables["CONCORD_DATA_DIR"].startswith(v + "/") for v in volume)
    (check,) = [a for i, a in instructions if i == "HEALTHCHECK"]
    argv = exec_form(check.split("CMD", 1)[1].strip())
    assert argv[:2] == ["concord", "health"]
    concord_args(argv[1:])
    (entrypoint,) = [exec_form(a) for i, a in instructions if i == "ENTRYPOINT"]
    (command,) = [exec_form(a) for i, a in instructions if i == "CMD"]
    assert entrypoint == ["concord"]
    concord_args(command)


def test_the_image_copies_what_exists_and_installs_an_extra_that_exists() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for instruction, arguments in dockerfile():
        if instruction == "COPY" and not arguments.startswith("--from="):
            *sources, _ = shlex.split(arguments)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        if instruction == "RUN" and "pip " in arguments:
            for extra in re.findall(r"\[(\w+)\]", arguments):
                assert extra in extras, f"{arguments}: no extra {extra}"


def test_the_image_exposes_the_ports_every_config_uses() -> None:
    (expose,) = [a for i, a in dockerfile() if i == "EXPOSE"]
    exposed = {int(p) for p in expose.split()}
    compose = load_yaml(DEPLOY / "compose" / "docker-compose.yml")[0]["services"]
    statefulset = next(
        d
        for d in load_yaml(DEPLOY / "kubernetes" / "statefulset.yaml")
        if d["kind"] == "StatefulSet"
    )
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    used = {p["containerPort"] for p in container["ports"]}
    for name in ("c1", "c2", "c3"):
        environment = compose[name]["environment"]
        used |= {host_port(environment[v])[1] for v in ("CONCORD_RAFT", "CONCORD_GRPC")}
    used.add(
        host_port(tomllib.loads((DEPLOY / "compose" / "concord.toml").read_text())["metrics"])[1]
    )
    assert used == exposed
    assert os.access(DEPLOY / "agent.py", os.R_OK)


def test_the_build_context_keeps_what_the_image_copies() -> None:
    """deploy/Dockerfile.dockerignore: everything out but the sources COPY names."""
    kept = {
        line[1:]
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for instruction, arguments in dockerfile():
        if instruction == "COPY" and not arguments.startswith("--from="):
            copied |= set(shlex.split(arguments)[:-1])
    assert copied == kept
