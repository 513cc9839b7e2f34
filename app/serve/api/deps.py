"""Dependencies injected into the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.serve.dataplane import DataPlane


def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
