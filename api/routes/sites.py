"""Sites: list with filters and paging, detail, and the newest readings of every device at a site."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import error_responses, not_found
from sanitel.api.latest import latest_for_devices
from sanitel.api.models import DeviceLatest, Page, Site, SiteDetail, SiteKind
from sanitel.api.params import DEFAULT_PAGE, Cursor, Ident, Limit, decode_cursor, encode_cursor
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import sites as queries

router = APIRouter(prefix="/sites", tags=["sites"], responses=error_responses(401, 403, 422))

SiteId = Annotated[Ident, Path(description="site id", examples=["futian"])]


@router.get("", response_model=Page[Site], summary="List sites")
async def list_sites(
    conn: Db, _: Viewer,
    kind: SiteKind | None = None,
    parent_id: Annotated[Ident | None, Query(description="direct children of this site")] = None,
    q: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$",
                                   description="substring of the name or id")] = None,
    limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
) -> Page[Site]:
    after = decode_cursor(cursor, str)[0] if cursor else None
    rows = await queries.list_sites(conn, kind=kind, parent_id=parent_id, q=q, after=after, limit=limit)
    items = [Site.model_validate(r) for r in rows]
    return Page(items=items, next_cursor=encode_cursor(items[-1].site_id) if len(items) == limit else None)


@router.get("/{site_id}", response_model=SiteDetail, summary="One site, with counts over its subtree",
            responses=error_responses(404))
async def get_site(site_id: SiteId, conn: Db, _: Viewer) -> SiteDetail:
    row = await queries.get_site(conn, site_id)
    if row is None:
        raise not_found("site", site_id)
    return SiteDetail.model_validate(row | await queries.site_counts(conn, site_id))


@router.get("/{site_id}/latest", response_model=Page[DeviceLatest],
            summary="Newest reading of every device at the site and below", responses=error_responses(404))
async def site_latest(site_id: SiteId, conn: Db, _: Viewer,
                      limit: Annotated[int, Query(ge=1, le=200, description="devices per page")] = 50,
                      cursor: Cursor = None) -> Page[DeviceLatest]:
    if not await queries.site_exists(conn, site_id):
        raise not_found("site", site_id)
    after = decode_cursor(cursor, str)[0] if cursor else None
    devices = await device_queries.list_devices(conn, kind=None, site_id=site_id, online=None, q=None,
                                                after=after, limit=limit)
    items = await latest_for_devices(conn, devices)
    return Page(items=items, next_cursor=encode_cursor(devices[-1]["device_id"]) if len(devices) == limit else None)
