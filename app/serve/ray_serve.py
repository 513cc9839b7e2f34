"""sbnn on Ray Serve: the same app (``create_app``) in N replicas behind Ray's HTTP proxy, each replica loading
the model repository itself (``serve run deploy/ray/serve.yaml``; docs/deploy.md#ray-serve).

The app is built inside each replica (``serve.ingress`` with a builder: the app holds threads and a model
repository, which are not shipped between processes), from the replica's environment (``SBNN_*``, set by the
config's ``runtime_env``); its lifespan loads and warms the models as ``sbnn serve`` does. gRPC stays off in
the replicas (``SBNN_GRPC_PORT=0``: two replicas on one node cannot share a port). Imported only where Ray is
installed (``pip install 'ray[serve]'``).
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from app.serve.app import create_app


def _app() -> Any:
    os.environ["SBNN_GRPC_PORT"] = "0"
    return create_app()


@serve.deployment(name="sbnn", ray_actor_options={"num_cpus": 1})
@serve.ingress(_app)
class SbnnReplica:
    """One replica: sbnn's whole FastAPI app, its model repository, batching engine and metrics."""


def build(args: dict[str, Any]) -> serve.Application:
    """The application Ray Serve runs (``import_path: app.serve.ray_serve:build``); ``args`` are unused: the
    deployment's replicas, autoscaling and resources come from the config, the server's settings from
    ``SBNN_*`` in its ``runtime_env``."""
    return SbnnReplica.bind()
