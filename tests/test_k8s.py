"""deploy/k8s: every kustomization renders (`kubectl kustomize`), every object validates offline against the
Kubernetes API schemas (kubernetes-validate) and the InferenceService against the vendored KServe CRD; the
settings the manifests set are the server's own, and an overlay's non-default values reach what it renders.

No cluster can run here (docs/deploy.md#kubernetes). Without kubectl the rendering tests skip, or fail when
``SBNN_CI=1`` (CI installs it).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/production", "overlays/slim"]
KUBERNETES_VERSION = "1.30.0"
CRD = K8S / "kserve" / "crd" / "serving.kserve.io_inferenceservices.yaml.gz"
CRD_SHA256 = "57c3bf13f77de94678bf2ae3748056ec071ad2b9e88d6a28f44fb4710758fcff"
CUSTOM_KINDS = {"ServiceMonitor"}  # the Prometheus Operator's CRD: checked field by field below


def render(kustomization: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        message = "kubectl is not installed (apt-get install kubernetes-client)"
        if os.environ.get("SBNN_CI") == "1":
            pytest.fail(message + "; SBNN_CI=1 requires it")
        pytest.skip(message)
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {doc["kind"]: doc for doc in docs}
    assert len(kinds) == len(docs), "one object of each kind"
    return kinds


def server_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    validate = pytest.importorskip("kubernetes_validate")
    docs = render(kustomization)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler"}
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_pod_runs_as_a_platform_team_expects(kustomization: str) -> None:
    kinds = by_kind(render(kustomization))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = server_container(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the one writable place a read-only root leaves
    assert volumes[mounts["/etc/sbnn/keys"]]["secret"]["secretName"] == "sbnn-api-keys"
    env = {e["name"]: e for e in container["env"]}
    assert env["SBNN_API_KEYS_FILE"]["value"] == "/etc/sbnn/keys/keys.json"
    assert env["SBNN_AUDIT_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sbnn-audit", "key": "url"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["grpc"]["port"] == 8081  # grpc.health.v1: SERVING once every model is ready
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8081}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["terminationGracePeriodSeconds"] > 30  # SBNN_SHUTDOWN_TIMEOUT_S drains for 30 s
    selector = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    for kind in ("PodDisruptionBudget",):
        assert kinds[kind]["spec"]["selector"]["matchLabels"] == selector
    assert kinds["Service"]["spec"]["selector"] == selector
    assert kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == selector
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    monitor = kinds["ServiceMonitor"]["spec"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"]["name"] == "sbnn-metrics-token"
    assert monitor["selector"]["matchLabels"].items() <= kinds["Service"]["metadata"]["labels"].items()


def test_the_production_overlay_sets_its_own_values() -> None:
    base, production = by_kind(render("base")), by_kind(render("overlays/production"))
    container = server_container(production["Deployment"]["spec"]["template"]["spec"])
    assert container["image"] == "registry.example.org/ml/sbnn:0.1.0-cpu"
    assert server_container(base["Deployment"]["spec"]["template"]["spec"])["image"] == "sbnn:cpu"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert production["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    assert production["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    assert {doc["metadata"].get("namespace") for doc in production.values()} == {"sbnn"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SBNN_MAX_REQUEST_COMPUTE_S"] == "2" and env["SBNN_PORT"] == "8000"  # merged, not replaced
    spread = production["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    slim = server_container(by_kind(render("overlays/slim"))["Deployment"]["spec"]["template"]["spec"])
    assert slim["image"] == "sbnn:slim" and {"name": "SBNN_BACKEND", "value": "onnx"} in slim["env"]


def inference_service() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())


def test_the_inference_service_validates_against_the_vendored_kserve_crd() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    raw = gzip.decompress(CRD.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == CRD_SHA256  # as PROVENANCE.md records
    crd = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = version["schema"]["openAPIV3Schema"]
    service = inference_service()
    assert service["apiVersion"] == f"{crd['spec']['group']}/v1beta1" and service["kind"] == "InferenceService"
    jsonschema.validate(service, schema)
    broken = inference_service()
    broken["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_inference_service_speaks_v2_rest_on_8080_and_grpc_on_8081() -> None:
    predictor = inference_service()["spec"]["predictor"]
    container = server_container(predictor)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SBNN_PORT"] == "8080" and env["SBNN_GRPC_PORT"] == "8081"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http1", 8080), ("h2c", 8081)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_setting_the_manifests_set_is_the_servers() -> None:
    """An SBNN_ variable the server does not know is ignored: a misspelt setting would silently not apply."""
    from app.serve.settings import Settings

    known = {f"SBNN_{name.upper()}" for name in Settings.model_fields}
    containers = [
        server_container(by_kind(render(k))["Deployment"]["spec"]["template"]["spec"]) for k in KUSTOMIZATIONS
    ]
    containers.append(server_container(inference_service()["spec"]["predictor"]))
    names = {e["name"] for container in containers for e in container["env"]}
    assert names and names <= known, sorted(names - known)
