"""The deployment files, parsed: compose wires the three services to files that exist, Prometheus scrapes the
service's /metrics port and loads rules that exist, and the alert rules and the Grafana dashboard name only
metrics and labels that the service exports (a renamed metric would silently blank a panel or an alert).

`deploy/ci-docker.sh` runs the real tools (docker compose config, promtool, a built image) where the machine
allows; these tests need none of them.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from app.serve.metrics import ServiceMetrics
from app.serve.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
# The gRPC port's default (tests/conftest.py turns gRPC off in this process's environment: not Settings()).
GRPC_PORT = Settings.model_fields["grpc_port"].default
# Series Prometheus itself makes per scrape target, with their labels.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
# PromQL words that look like metric names but are functions, aggregations or keywords.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "and",
    "or", "unless", "rate", "irate", "increase", "histogram_quantile", "label_values", "bool", "offset",
}  # fmt: skip


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every series name the service exports -> its label names (histograms' `le` included)."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    labels: dict[str, set[str]] = {}
    # No public API lists a metric's label names before it has samples: `_labelnames` is prometheus_client's own.
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            labels[wrapper._name] = set(wrapper._labelnames)  # type: ignore[attr-defined]
    for family in [*metrics.drift.describe(), *metrics.epistemic.describe()]:  # the custom collectors
        labels[family.name] = set(family._labelnames)  # type: ignore[attr-defined]
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        if family.name.startswith("process_"):  # ProcessCollector's: unlabelled, one sample each
            series |= {sample.name: set() for sample in family.samples}
            continue
        own = labels[family.name if family.name in labels else f"{family.name}_total"]
        if family.type == "histogram":
            series |= {f"{family.name}_bucket": own | {"le"}, f"{family.name}_count": own, f"{family.name}_sum": own}
        elif family.type == "counter":
            series[f"{family.name}_total"] = own
        else:
            series[family.name] = own
    return series


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The file on this machine that ``container_path`` is inside ``service``, through its bind mounts."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount, *_ = volume.split(":")
        if target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents:
            return ROOT / source / target.relative_to(mount)
    raise AssertionError(f"{container_path} is not under any of the service's volumes {service.get('volumes')}")


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from the short `HOST:CONTAINER` syntax."""
    ports = {}
    for entry in service.get("ports", []):
        host, container = str(entry).rsplit(":", 1)
        ports[int(container)] = int(host.rsplit(":", 1)[-1])
    return ports


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Stage name -> {"from": base, "instructions": [(INSTRUCTION, arguments)]}, in file order."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            base, *alias = arguments.split(" AS ")
            current = {"from": base.strip(), "instructions": []}
            stages[alias[0].strip() if alias else f"stage-{len(stages)}"] = current
        elif current is not None:
            current["instructions"].append((instruction.upper(), arguments.strip()))
    return stages


def inherited(stages: dict[str, dict[str, Any]], name: str, instruction: str) -> list[str]:
    """Arguments of ``instruction`` in stage ``name`` and the stages it is built on, base first."""
    stage = stages[name]
    base = inherited(stages, stage["from"], instruction) if stage["from"] in stages else []
    return base + [args for kind, args in stage["instructions"] if kind == instruction]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (label values, durations and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # matchers, checked on their own
    words = set(re.findall(r"(?<![\w$.:])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()", expr))
    return words - PROMQL_WORDS


def matched_labels(expr: str) -> dict[str, set[str]]:
    """metric -> label names in its `{...}` matchers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return {
        name: set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
        for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr)
    }


def grouping_labels(expr: str) -> set[str]:
    """Labels in by / without / on / ignoring clauses."""
    clauses = re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
    return {label.strip() for clause in clauses for label in clause.split(",") if label.strip()}


def check_expression(expr: str, where: str, exported: dict[str, set[str]], job: str) -> set[str]:
    """Assert every metric and label of ``expr`` exists; return the metrics."""
    known = {**exported, **PROMETHEUS_SERIES}
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - known.keys()
    assert not unknown, f"{where} refers to metrics the service does not export: {sorted(unknown)}"
    for name, labels in matched_labels(expr).items():
        assert labels <= known[name], f"{where}: {name} has no label(s) {sorted(labels - known[name])}"
    available = set().union(*(known[name] for name in names))
    assert grouping_labels(expr) <= available, f"{where}: groups by labels {sorted(grouping_labels(expr) - available)}"
    if "up" in names:  # Prometheus's own series: the job must be the scrape job's name
        assert re.search(rf'\bup\{{[^}}]*job="{re.escape(job)}"', expr), f"{where}: up{{}} must select job {job!r}"
    return names


@pytest.fixture(scope="module")
def prometheus_config(services: dict[str, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    service = services["prometheus"]
    config = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    path = host_path(service, config)
    assert path.is_file(), path
    return path, load_yaml(path)


@pytest.fixture(scope="module")
def rules(services: dict[str, dict[str, Any]], prometheus_config: tuple[Path, dict[str, Any]]) -> list[dict]:
    _, config = prometheus_config
    files = [host_path(services["prometheus"], f) for f in config["rule_files"]]
    assert files and all(f.is_file() for f in files), files
    return [rule for f in files for group in load_yaml(f)["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def available(rules: list[dict], exported: dict[str, set[str]], prometheus_config) -> dict[str, set[str]]:
    """What alerts and panels may select: the exported series and the recording rules' (labels: the ones
    their outer aggregation keeps), each recording rule checked against what precedes it."""
    job = scrape_job(prometheus_config[1])["job_name"]
    known = dict(exported)
    for rule in rules:
        if "record" in rule:
            assert re.fullmatch(r"sbnn:[a-z_]+:\w+", rule["record"]), rule["record"]  # level:metric:operations
            check_expression(rule["expr"], f"recording rule {rule['record']}", known, job)
            kept = re.match(r"\s*sum by \(([^)]*)\)", rule["expr"])
            assert kept, f"recording rule {rule['record']}: an outer sum by (...) names its labels"
            known[rule["record"]] = {label.strip() for label in kept.group(1).split(",")}
    return known


@pytest.fixture(scope="module")
def dashboard(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    path = host_path(services["grafana"], home)
    assert path == GRAFANA / "dashboards" / "sbnn.json"
    return json.loads(path.read_text())


def scrape_job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "sbnn"]
    return job


def test_compose_wires_the_services(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"sbnn", "prometheus", "alertmanager", "grafana"}
    sbnn, prometheus, grafana = services["sbnn"], services["prometheus"], services["grafana"]
    alertmanager = services["alertmanager"]
    assert (ROOT / sbnn["build"]["context"] / "Dockerfile").is_file()
    assert sbnn["environment"]["SBNN_MODELS"] == "/models"  # where the image puts the bundled models
    assert "SBNN_PORT" not in sbnn["environment"], "the scrape target and healthcheck assume the default port"
    assert "SBNN_GRPC_PORT" not in sbnn["environment"], "the published gRPC port is the image's"
    assert published(sbnn) == {Settings().port: 8000, GRPC_PORT: 8081}  # REST and gRPC
    assert published(prometheus) == {9090: 9090} and published(grafana) == {3000: 3000}
    assert published(alertmanager) == {9093: 9093}
    # Every port is published on loopback unless the operator names an address.
    for service in services.values():
        for entry in service["ports"]:
            assert str(entry).startswith("${SBNN_BIND_ADDRESS:-127.0.0.1}:"), entry
    # Each service starts once what it needs is healthy, and has a health check of its own (sbnn: the image's).
    assert prometheus["depends_on"] == {
        "sbnn": {"condition": "service_healthy"},
        "alertmanager": {"condition": "service_healthy"},
    }
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for service in (prometheus, alertmanager):
        assert "/-/ready" in " ".join(service["healthcheck"]["test"])
    # Configuration is mounted read-only from folders of this repository; state lives in named volumes.
    named = set(compose["volumes"])
    for service in services.values():
        for volume in service["volumes"]:
            source, mount, *mode = volume.split(":")
            if source in named:
                continue
            assert (ROOT / source).is_dir() and mode == ["ro"], volume
    assert host_path(prometheus, "/etc/prometheus") == PROMETHEUS
    assert host_path(alertmanager, "/etc/alertmanager") == ROOT / "deploy" / "alertmanager"
    assert host_path(grafana, "/etc/grafana/provisioning") == GRAFANA / "provisioning"
    data = {service: {v.split(":")[1] for v in services[service]["volumes"] if v.split(":")[0] in named}
            for service in services}  # fmt: skip
    assert "/prometheus" in data["prometheus"] and "/alertmanager" in data["alertmanager"]
    assert "/var/lib/grafana" in data["grafana"] and "/var/lib/sbnn/audit" in data["sbnn"]
    assert "--storage.tsdb.path=/prometheus" in prometheus["command"]
    # Grafana: no default admin password (compose refuses to start without one), no anonymous access.
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # The service's health check is the image's: compose must not switch it off.
    assert "healthcheck" not in sbnn or not sbnn["healthcheck"].get("disable", False)
    for service in services.values():
        assert service["restart"] == "unless-stopped"
    # The grace period outlasts the drain (SBNN_SHUTDOWN_TIMEOUT_S, 30 s by default): a stop is never a kill.
    drain = float(sbnn["environment"].get("SBNN_SHUTDOWN_TIMEOUT_S", 30))
    assert int(sbnn["stop_grace_period"].rstrip("s")) > drain
    # A read-only root filesystem with a tmpfs for temporary files (the server writes nowhere else but the trail).
    assert sbnn["read_only"] is True and "/tmp" in sbnn["tmpfs"]


def test_prometheus_sends_its_alerts_to_the_alertmanager(
    services: dict[str, dict[str, Any]], prometheus_config: tuple[Path, dict[str, Any]], rules: list[dict]
) -> None:
    (alerting,) = prometheus_config[1]["alerting"]["alertmanagers"]
    (target,) = alerting["static_configs"][0]["targets"]
    host, port = target.rsplit(":", 1)
    assert host in services and int(port) in published(services[host])
    config = load_yaml(ROOT / "deploy" / "alertmanager" / "alertmanager.yml")
    receivers = {r["name"]: r for r in config["receivers"]}
    routed = {config["route"]["receiver"], *(r["receiver"] for r in config["route"].get("routes", []))}
    assert routed <= receivers.keys()
    for name in routed:  # every route ends in a receiver that sends somewhere
        assert receivers[name].get("webhook_configs"), name
    assert {rule["labels"]["severity"] for rule in rules if "alert" in rule} <= {"critical", "warning"}


def test_the_dockerfile_passes_a_platform_teams_checks() -> None:
    """No registry frontend, OCI labels, and pip and torch's headers, tests and test binaries left out."""
    text = (ROOT / "Dockerfile").read_text()
    assert not text.startswith("# syntax=") and "# syntax=" not in text.splitlines()[0]
    stages = dockerfile_stages()
    labels = " ".join(inherited(stages, "runtime", "LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert inherited(stages, "slim", "LABEL") == inherited(stages, "runtime", "LABEL")
    # Both serving images' virtualenvs go through deploy/trim-venv.sh (the Docker CI runs the results).
    for stage in ("runtime-files", "slim-files"):
        runs = [arguments for kind, arguments in stages[stage]["instructions"] if kind == "RUN"]
        assert runs == ["sh /tmp/trim-venv.sh /opt/sbnn"], stage
    trim = (ROOT / "deploy" / "trim-venv.sh").read_text()
    for path in ("torch/include", "torch/test", "torch/bin"):
        assert f'"$site/{path}"' in trim, path
    assert "! -name torch_shm_manager" in trim  # `import torch` needs it
    assert "pip uninstall" in trim and "strip --strip-unneeded" in trim
    assert 'if [ -d "$site/$package.libs" ]' in trim  # auditwheel's patched libraries are never stripped
    copies = {arguments for kind, arguments in stages["runtime"]["instructions"] if kind == "COPY"}
    assert "--from=runtime-files /opt/sbnn /opt/sbnn" in copies
    copies = {arguments for kind, arguments in stages["slim"]["instructions"] if kind == "COPY"}
    assert "--from=slim-files /opt/sbnn /opt/sbnn" in copies


def test_the_image_runs_unprivileged_with_a_readiness_healthcheck() -> None:
    stages = dockerfile_stages()
    served = list(stages)[-1]  # compose builds the last stage (no target)
    assert served == "runtime" and {"runtime", "slim"} <= stages.keys()
    for name in ("runtime", "slim"):
        (user,) = inherited(stages, name, "USER")
        assert user.split(":")[0] == "10001"
        (healthcheck,) = inherited(stages, name, "HEALTHCHECK")
        options, _, command = healthcheck.partition("CMD")
        assert "/v2/health/ready" in command and "SBNN_PORT" in command
        assert "--interval" in options and "--timeout" in options
        env = dict(pair.split("=", 1) for args in inherited(stages, name, "ENV") for pair in shlex.split(args))
        assert env["SBNN_PORT"] == str(Settings().port) and env["SBNN_MODELS"] == "/models"
        assert env.get("SBNN_GRPC_PORT", str(GRPC_PORT)) == str(GRPC_PORT) != "0"
        exposed = [port for args in inherited(stages, name, "EXPOSE") for port in args.split()]
        assert exposed == [env["SBNN_PORT"], str(GRPC_PORT)]  # REST, then gRPC
        (command,) = inherited(stages, name, "CMD")
        assert json.loads(command) == ["sbnn", "serve"]


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string (``"grpcio>=1.85.1,<2"`` -> ``"grpcio"``)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def pip_installs(stage: dict[str, Any]) -> set[str]:
    """The packages a stage's RUN instructions `pip install ... -c deploy/constraints.txt` (options left out)."""
    runs = " && ".join(arguments for kind, arguments in stage["instructions"] if kind == "RUN")
    lists = re.findall(r"pip install [^&]*?-c deploy/constraints\.txt([^&]*)", runs)
    return {requirement_name(word) for words in lists for word in words.split() if not word.startswith("-")}


def test_the_images_install_and_pin_the_serving_dependencies() -> None:
    """gRPC included: the package installs with --no-deps, so each image lists its dependencies itself; every one
    is pinned in deploy/constraints.txt and in the wheelhouse deploy/ci-docker.sh builds the images from."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    assert {"grpcio", "grpcio-health-checking", "protobuf"} <= required
    pinned = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[requirement_name(name)] = version.strip()
    assert required <= pinned.keys(), sorted(required - pinned.keys())
    assert pinned["grpcio"] == "1.85.3" and pinned["grpcio-health-checking"] == "1.85.1"
    stages = dockerfile_stages()
    assert required <= pip_installs(stages["build"]), sorted(required - pip_installs(stages["build"]))
    slim = required - {"torch"}  # the slim image runs onnxruntime, not torch
    assert slim <= pip_installs(stages["build-slim"]) and "torch" not in pip_installs(stages["build-slim"])
    script = re.sub(r"\\\n", " ", (ROOT / "deploy" / "ci-docker.sh").read_text())
    (download,) = re.findall(r"pip download .*?-c deploy/constraints\.txt(.*)", script)
    wheelhouse = {requirement_name(word) for word in download.split() if not word.startswith("-")}
    assert required | pip_installs(stages["export"]) <= wheelhouse


def test_prometheus_scrapes_the_service_metrics_route(
    services: dict[str, dict[str, Any]], prometheus_config: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from app.serve.app import create_app

    _, config = prometheus_config
    job = scrape_job(config)
    (static,) = job["static_configs"]
    (target,) = static["targets"]
    host, port = target.rsplit(":", 1)
    assert host in services and host == "sbnn"
    assert int(port) in published(services["sbnn"])  # the container port the service listens on
    path = job.get("metrics_path", "/metrics")

    async def scrape() -> httpx.Response:  # the ASGI transport runs no lifespan: no model loads
        transport = httpx.ASGITransport(app=create_app(Settings(models=tmp_path)))
        async with httpx.AsyncClient(transport=transport, base_url="http://sbnn") as client:
            return await client.get(path)

    answer = asyncio.run(scrape())
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert "# TYPE sbnn_decisions_total counter" in answer.text


def test_rule_files_exist_and_every_rule_is_complete(rules: list[dict], prometheus_config) -> None:
    config_path, config = prometheus_config
    assert config_path == PROMETHEUS / "prometheus.yml" and config["rule_files"] == ["/etc/prometheus/rules.yml"]
    names = [rule["alert"] for rule in rules if "alert" in rule]
    assert len(names) == len(set(names)) == 6  # deploy/ci-docker.sh expects the six loaded
    for rule in (rule for rule in rules if "alert" in rule):
        assert rule["expr"].strip() and re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"].strip()
    # promtool's unit tests (run by deploy/ci-docker.sh) load the same rules and test alerts that exist.
    unit = load_yaml(PROMETHEUS / "rules.test.yml")
    assert all((PROMETHEUS / f).is_file() for f in unit["rule_files"]) and unit["rule_files"] == ["rules.yml"]
    tested = {case["alertname"] for test in unit["tests"] for case in test["alert_rule_test"]}
    assert tested and tested <= set(names)


def test_alert_rules_use_exported_metrics(
    rules: list[dict], exported: dict[str, set[str]], available: dict[str, set[str]], prometheus_config
) -> None:
    job = scrape_job(prometheus_config[1])["job_name"]
    used = set()
    for rule in (rule for rule in rules if "alert" in rule):
        used |= check_expression(rule["expr"], f"rule {rule['alert']}", available, job)
        # Annotations template labels of the alert's series.
        templated = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]))
        labels = set().union(*(available.get(n, PROMETHEUS_SERIES.get(n, set())) for n in metric_names(rule["expr"])))
        assert templated <= labels, f"rule {rule['alert']}: summary names labels {sorted(templated - labels)}"
    assert {"sbnn_drift_psi", "sbnn_drift_ood_rate", "sbnn_decisions_total", "sbnn:drift_psi_fleet:1h"} <= used
    # promtool's unit test series are exported series with exported labels, too.
    for test in load_yaml(PROMETHEUS / "rules.test.yml")["tests"]:
        for series in test["input_series"]:
            name, _, body = series["series"].partition("{")
            labels = set(re.findall(r"(\w+)\s*=", body)) - {"instance"}  # the scrape's, one per replica
            assert name in exported and labels <= exported[name], series["series"]


def test_dashboard_uses_exported_metrics_and_the_provisioned_datasource(
    dashboard: dict[str, Any],
    exported: dict[str, set[str]],
    available: dict[str, set[str]],
    services: dict[str, dict[str, Any]],
    prometheus_config,
) -> None:
    (datasource,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host in services and int(port) in published(services[host])
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "sbnn.yml")["providers"]
    assert host_path(services["grafana"], provider["options"]["path"]) == GRAFANA / "dashboards"

    job = scrape_job(prometheus_config[1])["job_name"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = check_expression(target["expr"], f"panel {panel['title']!r}", available, job)
            used |= names
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            labels = set().union(*(available[n] for n in names))
            assert legend <= labels, f"panel {panel['title']!r}: legend names labels {sorted(legend - labels)}"
    (variable,) = dashboard["templating"]["list"]
    assert variable["datasource"]["uid"] == datasource["uid"]
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]).groups()
    assert metric in exported and label in exported[metric] and label == variable["name"]
    used.add(metric)


def test_every_exported_metric_is_on_a_panel_or_in_an_alert(
    dashboard: dict[str, Any], rules: list[dict], exported: dict[str, set[str]]
) -> None:
    expressions = [r["expr"] for r in rules] + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions.append(dashboard["templating"]["list"][0]["query"].replace("label_values(", "("))
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for e in expressions for n in metric_names(e)}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    # Identity and batching figures, for ad-hoc queries: nothing to alert on or chart by default.
    unwatched = {"sbnn_model_info", "sbnn_predictions_total", "sbnn_batch_rows", "sbnn_batch_requests"}
    assert unwatched <= families, sorted(unwatched - families)
    assert families - unwatched <= used, f"exported, on no panel and in no alert: {sorted(families - unwatched - used)}"


def test_the_images_keep_the_audit_trail_on_a_volume() -> None:
    """The trail is on in the images: the audit extra installed in both, SQLite under a volume the user owns."""
    stages = dockerfile_stages()
    audit = {"sqlalchemy", "psycopg", "psycopg-binary"}
    assert audit <= pip_installs(stages["build"]) and audit <= pip_installs(stages["build-slim"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "SBNN_AUDIT_DIR=/var/lib/sbnn/audit" in dockerfile
    assert 'VOLUME ["/var/lib/sbnn/audit"]' in dockerfile
    assert "chown 10001:10001 /var/lib/sbnn/audit" in dockerfile


def test_the_dashboard_imports_into_another_grafana(dashboard: dict[str, Any]) -> None:
    """deploy/grafana/sbnn-export.json is the provisioned dashboard in Grafana's sharing form: its datasource an
    input the importer picks (``__inputs``), no uid of the compose stack left, nothing else changed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_dashboard", GRAFANA / "export_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shared = json.loads((GRAFANA / "sbnn-export.json").read_text())
    assert shared == module.exported(dashboard), "run python deploy/grafana/export_dashboard.py"
    (source,) = shared["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == "prometheus"
    text = json.dumps({k: v for k, v in shared.items() if k != "__inputs"})
    assert '"uid": "prometheus"' not in text and text.count("${" + source["name"] + "}") == len(shared["panels"]) + 1
    assert shared["id"] is None and shared["uid"] == dashboard["uid"] and shared["panels"] != []
