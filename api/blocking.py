"""Blocking database code on the API's pool: ``run_blocking(conn, work, …)`` runs ``work`` — code written
for a psycopg ``Connection``, such as the compliance report the command line also prints — in a worker
thread, on the request's pooled async connection. Each statement ``work`` executes hops back to the event
loop, which alone touches the connection. So shared report code needs no async twin of its SQL, and its
CPU-heavy parts (pandas, matplotlib) keep off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.to_thread
import psycopg
from psycopg import AsyncConnection

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class _Rows:
    rows: list[Any]

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows


class _BlockingConnection:
    """What blocking code uses of a ``psycopg.Connection`` — ``execute(…)`` then ``fetchone()`` or
    ``fetchall()`` — carried out on an async connection owned by the event loop."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    def execute(self, query: Any, params: Any = None) -> _Rows:
        return anyio.from_thread.run(self._execute, query, params)

    async def _execute(self, query: Any, params: Any) -> _Rows:
        cur = await self._conn.execute(query, params)
        return _Rows(await cur.fetchall() if cur.description is not None else [])


async def run_blocking(conn: AsyncConnection, work: Callable[Concatenate[psycopg.Connection, P], T],
                       *args: P.args, **kwargs: P.kwargs) -> T:
    """``work(connection, *args, **kwargs)`` in a worker thread, its statements run on ``conn``."""
    # cast: ``work`` is typed for the psycopg class; it gets the part of it that it uses
    blocking = cast(psycopg.Connection, _BlockingConnection(conn))
    return await anyio.to_thread.run_sync(lambda: work(blocking, *args, **kwargs))
