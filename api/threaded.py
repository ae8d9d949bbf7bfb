"""The API served by uvicorn in a thread of the calling process, on a free local port: for the browser tests, the
console's screenshots and its benchmark, which drive a real server (endless SSE responses, a real browser)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, start_timeout_s: float = 30) -> Iterator[str]:
    """``app`` served on 127.0.0.1 at a free port until the block ends; yields its base URL."""
    # port 0: the kernel picks a free port when uvicorn binds (no window for another process to take it)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="sanitel-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"uvicorn did not start within {start_timeout_s:g} s")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
