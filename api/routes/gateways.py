"""Gateways: registered with the devices behind them (issue 12; filled in by the gateway work)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/gateways", tags=["devices"])
