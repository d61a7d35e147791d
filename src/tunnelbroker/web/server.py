"""Serve the web application from the daemon's event loop with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from tunnelbroker.config import WebSection
from tunnelbroker.web.app import WebContext, create_app

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn would take SIGINT and SIGTERM for itself: the daemon owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """uvicorn on sockets we bind ourselves (so port 0 works and errors are ours to word)."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: list[socket.socket] = []

    async def start(self) -> None:
        web: WebSection = self.ctx.config.web
        port = web.port
        try:
            for addr in web.listen:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                s = socket.socket(family, socket.SOCK_STREAM)
                self._sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, port))
                s.listen(128)
                s.setblocking(False)
                port = s.getsockname()[1]  # the others follow a port picked for "0"
        except OSError as e:
            self.close_sockets()
            raise OSError(e.errno, f"web: cannot listen on {addr} port {port}: {e.strerror}") from e
        self.port = port
        config = uvicorn.Config(
            create_app(self.ctx),
            log_config=None,
            access_log=False,
            lifespan="off",
            proxy_headers=True,
            forwarded_allow_ips=list(web.trusted_proxies),
            server_header=False,
            timeout_keep_alive=15,
            h11_max_incomplete_event_size=16384,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=self._sockets))
        for _ in range(500):
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            await self._task
            raise OSError("web: the server stopped while starting")
        log.info("web on %s port %d", ", ".join(web.listen), port)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
        self.close_sockets()

    def close_sockets(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets.clear()
