"""The dashboard's web server: one static page and a server-sent-events push channel.

aiohttp runs in a thread of its own with its own asyncio loop, beside the node's rclpy
executor. Every ``push_period`` one producer builds the state (``snapshot()``) once and,
every ``image_period``, the camera previews (``images()``); each connected browser's
handler then writes the *newest* of these when it is ready for more. A browser that reads
slowly (or a slow link) therefore skips updates (counted as ``skipped``), nothing queues
up, and the node's callbacks never wait for a browser: they only touch the state.

Routes: ``/`` (the page), ``/static/<file>``, ``/events`` (``text/event-stream`` with
``state`` and ``images`` events, JSON) and ``/state`` (one snapshot, for scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

__all__ = ["STATIC_DIR", "DashboardServer"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page's HTML, JavaScript and CSS (installed with the package; no build step)."""
_STOP_TIMEOUT_S = 5.0


class DashboardServer:
    """Serve the page on ``host:port`` (port 0: a free one) from a background thread.

    Args:
        snapshot: The state as a JSON-ready dict (called from the server's thread).
        images: Camera previews, device -> ``data:`` URL (called from the server's thread).
        host: Bind address (``127.0.0.1``: this machine only).
        port: TCP port; 0 picks a free one (see :attr:`url`).
        push_period: Seconds between state pushes.
        image_period: Seconds between preview pushes.
    """

    def __init__(self, snapshot: Callable[[], dict], images: Callable[[], dict[int, str]],
                 host: str = "127.0.0.1", port: int = 0, push_period: float = 0.2,
                 image_period: float = 0.5) -> None:
        if push_period <= 0 or image_period <= 0:
            raise ValueError("push_period and image_period must be > 0")
        self._snapshot, self._images = snapshot, images
        self.push_period, self.image_period = push_period, image_period
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ValueError(f"cannot serve on {host}:{port}: {exc}") from exc
        self.host, self.port = host, self._socket.getsockname()[1]
        self.clients = 0
        self.pushes = 0
        self.skipped = 0
        self.errors = 0
        self._state_event = self._image_event = b""
        self._version = 0
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self._producer: asyncio.Future | None = None
        self._handlers: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._run, name="dashboard-http", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> DashboardServer:
        """Start serving; returns once the socket listens.

        Raises:
            RuntimeError: If the server could not start (the cause chained).
        """
        self._thread.start()
        self._started.wait(_STOP_TIMEOUT_S)
        if self._failure is not None or not self._started.is_set():
            raise RuntimeError("the dashboard server did not start") from self._failure
        return self

    def stop(self) -> None:
        """Close every connection and the socket, and end the thread."""
        if not self._thread.is_alive():
            self._socket.close()
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(_STOP_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_STOP_TIMEOUT_S)

    # -- the server's thread ---------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()'s caller
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_get("/state", self._state)
        app.router.add_static("/static/", STATIC_DIR)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()
        self._producer = asyncio.ensure_future(self._produce())

    async def _shutdown(self) -> None:
        if self._producer is not None:
            self._producer.cancel()
        # A browser's handler waits for the next push: end them here, not after the
        # runner's shutdown timeout.
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _produce(self) -> None:
        next_images = 0.0
        while True:
            try:
                state = json.dumps(self._snapshot(), allow_nan=False)
                self._state_event = f"event: state\ndata: {state}\n\n".encode()
                if time.monotonic() >= next_images:
                    next_images = time.monotonic() + self.image_period
                    images = json.dumps({str(k): v for k, v in self._images().items()})
                    self._image_event = f"event: images\ndata: {images}\n\n".encode()
            except Exception:  # a bad value must not end the pushes
                self.errors += 1
            async with self._changed:
                self._version += 1
                self._changed.notify_all()
            await asyncio.sleep(self.push_period)

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.clients += 1
        task = asyncio.current_task()
        self._handlers.add(task)
        seen = images_sent = None

        def news() -> bool:
            return self._version != seen

        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(news)
                if seen is not None:
                    self.skipped += self._version - seen - 1
                seen = self._version
                payload = self._state_event
                if self._image_event is not images_sent:
                    images_sent = self._image_event
                    payload += images_sent
                await response.write(payload)  # waits while this browser is behind
                self.pushes += 1
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients -= 1
            self._handlers.discard(task)
        return response
