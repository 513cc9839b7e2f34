"""Dependencies injected into the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.serve.dataplane import DataPlane


async def get_dataplane(request: Request) -> DataPlane:
    """Async on purpose: FastAPI runs a plain function dependency on its thread pool, a hop per request."""
    return request.app.state.dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
