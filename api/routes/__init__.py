"""One router per resource. Routes validate, authorise and call a query function; no SQL here.

``ROUTERS``: every router of the JSON API, in the order ``api.app.create_app`` includes them.
"""

from __future__ import annotations

from fastapi import APIRouter

from sanitel.api.routes import (
    alerts,
    clearance,
    deposits,
    devices,
    emissions,
    fleet,
    gateways,
    health,
    incidents,
    marks,
    readings,
    reports,
    routes,
    rules,
    silences,
    sites,
    sorting_points,
    webhooks,
)

ROUTERS: tuple[APIRouter, ...] = tuple(module.router for module in (
    sites, devices, fleet, gateways, routes, readings, deposits, alerts, incidents, silences, webhooks, rules,
    reports, sorting_points, clearance, emissions, marks, health))
