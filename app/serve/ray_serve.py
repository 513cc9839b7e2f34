"""sbnn on Ray Serve: the same app (``create_app``) in N replicas behind Ray's HTTP and gRPC proxies, each replica
loading the model repository itself (``serve run deploy/ray/serve.yaml``; docs/deploy.md#ray-serve).

The app is built inside each replica (``serve.ingress`` with a builder: the app holds threads and a model
repository, which are not shipped between processes), from the replica's environment (``SBNN_*``, set by the
config's ``runtime_env``), with three changes:

- its startup loads and warms every model before it returns (``load_before_serving``): Ray routes to a replica
  once its app has started, so a new or replaced replica never answers "loading";
- ``SBNN_METRICS_PORT`` is a base: replica k of the deployment (Ray's rank, 0..N-1 across nodes) serves its
  own metrics on base + k, a scrape target of its own, so Prometheus sums the replicas' counters instead of
  seeing whichever replica Ray's proxy picked (docs/deploy.md#ray-serve);
- its own gRPC port stays off (two replicas on one node cannot share one): the Open Inference Protocol's gRPC
  service is the replica's methods instead, behind Ray's gRPC proxy (:mod:`app.serve.ray_grpc`).

Imported only where Ray is installed (the ``ray`` extra: ``pip install -e '.[ray]'``).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from app.serve import ray_grpc
from app.serve.app import create_app
from app.serve.settings import Settings


def replica_settings(settings: Settings, rank: int | None) -> Settings:
    """A replica's settings: the environment's, with the models loaded before it serves, gRPC off and the
    metrics port moved by the replica's rank (none without a rank)."""
    update: dict[str, Any] = {"grpc_port": 0, "load_before_serving": True}
    if settings.metrics_port:
        update["metrics_port"] = settings.metrics_port + rank if rank is not None else 0
    return Settings(**{**settings.model_dump(), **update})  # validated again: base + rank stays a port


def _app() -> Any:
    rank = serve.get_replica_context().rank
    return create_app(replica_settings(Settings(), None if rank is None else rank.rank))


@serve.deployment(name="sbnn", ray_actor_options={"num_cpus": 1})
@serve.ingress(_app)
class SbnnReplica:
    """One replica: sbnn's whole FastAPI app, its model repository, batching engine and metrics; and the Open
    Inference Protocol's gRPC RPCs for Ray's gRPC proxy (``self.app``: the app Ray built in this replica)."""

    ServerLive = ray_grpc.rpc("ServerLive")
    ServerReady = ray_grpc.rpc("ServerReady")
    ServerMetadata = ray_grpc.rpc("ServerMetadata")
    ModelReady = ray_grpc.rpc("ModelReady")
    ModelMetadata = ray_grpc.rpc("ModelMetadata")
    ModelInfer = ray_grpc.rpc("ModelInfer")


def build(args: dict[str, Any]) -> serve.Application:
    """The application Ray Serve runs (``import_path: app.serve.ray_serve:build``); ``args`` are unused: the
    deployment's replicas, autoscaling and resources come from the config, the server's settings from
    ``SBNN_*`` in its ``runtime_env``."""
    return SbnnReplica.bind()
