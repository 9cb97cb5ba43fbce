"""deploy/kubernetes: the manifests parse; the StatefulSet's pods, with the environment
Kubernetes would give each ($(POD_NAME) expanded, the Secrets' keys), the ConfigMap's
file and the certificates the Secret holds, are nodes `concord serve` accepts; readiness
is `concord health` as the pod; names, labels and ports agree across the manifests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from coordinator.security.certs import init_dir
from coordinator.security.identity import Identity, Role
from tests.deploy.conftest import (
    DEPLOY,
    STRONG_SECRET,
    Machine,
    concord_args,
    dockerfile,
    exec_form,
    host_port,
    load_yaml,
    node_settings,
)

K8S = DEPLOY / "kubernetes"


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in load_yaml(path):
            assert {"apiVersion", "kind"} <= set(document), f"{path.name}: {document}"
            if document["kind"] == "Kustomization":
                continue
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{path.name}: {key} twice"
            found[key] = document
    return found


def _one(kind: str) -> dict[str, Any]:
    (found,) = [o for (k, _), o in _objects().items() if k == kind]
    return found


def _container() -> dict[str, Any]:
    (container,) = _one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _pod_names() -> list[str]:
    statefulset = _one("StatefulSet")
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    return [f"{name}-{i}" for i in range(replicas)]


def _environment(pod: str) -> dict[str, str]:
    """The container's environment in pod ``pod``, as the kubelet makes it."""
    secrets = {
        (o["metadata"]["name"], key): value
        for (kind, _), o in _objects().items()
        if kind == "Secret"
        for key, value in o.get("stringData", {}).items()
    }
    environ: dict[str, str] = {}
    for variable in _container()["env"]:
        source = variable.get("valueFrom")
        if source is None:
            value = re.sub(r"\$\((\w+)\)", lambda m: environ[m[1]], variable["value"])
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", variable
            value = pod
        else:
            ref = source["secretKeyRef"]
            assert (ref["name"], ref["key"]) in secrets, f"no Secret key for {variable}"
            value = STRONG_SECRET  # the real Secret holds `openssl rand -hex 32`
        environ[variable["name"]] = value
    return environ


def _machine(tmp_path: Path, pod: str) -> Machine:
    """The pod's container: the ConfigMap's file, the Secret's certificates (as the init
    container copies them into the tls volume) and the data volume."""
    machine = Machine(tmp_path / pod)
    spec = _one("StatefulSet")["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    tls_secret = next(
        _objects()[("Secret", v["secret"]["secretName"])] for v in volumes.values() if "secret" in v
    )
    for mount in _container()["volumeMounts"]:
        here = tmp_path / pod / "volumes" / mount["name"]
        volume = volumes.get(mount["name"])
        if volume is not None and "configMap" in volume:
            config_map = _objects()[("ConfigMap", volume["configMap"]["name"])]
            here = here / mount["subPath"]
            here.parent.mkdir(parents=True, exist_ok=True)
            here.write_text(config_map["data"][mount["subPath"]])
        elif volume is not None and "emptyDir" in volume:  # the certificates
            names = sorted(tls_secret["stringData"])
            nodes = [Identity("concord", Role.NODE, n) for n in _pod_names()]
            init_dir(here, "concord", [*nodes, Identity("concord", Role.OPERATOR, "admin")])
            made = sorted(p.name for p in here.iterdir() if p.name != "ca.key")
            assert made == names, "the Secret concord-tls holds other files than certs init makes"
        else:
            assert mount["name"] in claims, mount
            here.mkdir(parents=True)
        machine.mount(mount["mountPath"], here)
    return machine


def test_the_manifests_parse_into_the_objects_a_cluster_needs() -> None:
    kinds = sorted(kind for kind, _ in _objects())
    assert kinds == [
        "ConfigMap",
        "PodDisruptionBudget",
        "Secret",
        "Secret",
        "Service",
        "Service",
        "StatefulSet",
    ]
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


@pytest.mark.parametrize("pod", _pod_names())
def test_each_pod_is_a_node_serve_accepts(pod: str, tmp_path: Path) -> None:
    container = _container()
    (entrypoint,) = [exec_form(a) for i, a in dockerfile() if i == "ENTRYPOINT"]
    argv = [*container.get("command", entrypoint), *container.get("args", [])]
    assert argv[:2] == ["concord", "serve"], argv
    machine = _machine(tmp_path, pod)
    node = node_settings(concord_args(argv[1:]), _environment(pod), machine)
    service = _one("StatefulSet")["spec"]["serviceName"]
    assert node.node_id == pod
    assert host_port(node.raft)[0] == host_port(node.grpc)[0] == f"{pod}.{service}"
    assert sorted([pod, *(p.node_id for p in node.peers)]) == _pod_names()
    for peer in node.peers:
        assert host_port(peer.raft)[0] == host_port(peer.grpc)[0] == f"{peer.node_id}.{service}"
    assert node.tls.identity is not None and node.tls.identity.name == pod
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "raft": host_port(node.raft)[1],
        "grpc": host_port(node.grpc)[1],
        "metrics": host_port(node.metrics or "")[1],
    }
    data = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert str(node.data_dir).startswith(str(machine.path(data["mountPath"])))
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["exec"]["command"]
        assert check[:2] == ["concord", "health"], check
        assert node_settings(concord_args(check[1:]), _environment(pod), machine).node_id == pod
    dialled = sorted(_environment(pod)["CONCORD_COORDINATORS"].split(","))
    assert dialled == sorted(f"{p}.{service}:{host_port(node.grpc)[1]}" for p in _pod_names())


def test_the_services_and_the_budget_select_the_pods() -> None:
    statefulset = _one("StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    headless = _objects()[("Service", statefulset["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    services = [o for (k, _), o in _objects().items() if k == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert ports[port["name"]] == port["port"], port
            assert port.get("targetPort", port["name"]) in (port["name"], port["port"])
    budget = _one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    majority = statefulset["spec"]["replicas"] // 2 + 1
    assert statefulset["spec"]["replicas"] - budget["spec"]["maxUnavailable"] >= majority


def test_the_pods_run_as_the_images_user_and_the_config_parses() -> None:
    context = _one("StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    (user,) = [a for i, a in dockerfile() if i == "USER"]
    assert context["runAsNonRoot"] is True
    (useradd,) = [a for i, a in dockerfile() if i == "RUN" and "useradd" in a]
    assert f"--uid {context['runAsUser']}" in useradd and user in useradd
    assert f"groupadd --system --gid {context['runAsGroup']} {user}" in useradd
    assert context["fsGroup"] == context["runAsGroup"]
    tomllib.loads(_one("ConfigMap")["data"]["concord.toml"])
