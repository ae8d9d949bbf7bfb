"""Alert webhooks: list, add, remove (issue 12; filled in by the alerts work)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/webhooks", tags=["alerts"])
