"""Headless Chromium driven over the DevTools protocol: open a page, read it, screenshot it.

For the dashboard's browser test, its screenshot and the benchmark that keeps the page
open: Debian's ``chromium`` started with ``--headless=new --remote-debugging-port=0``,
and its page spoken to over the DevTools WebSocket with aiohttp's client (no Selenium or
driver binary). Synchronous: each call runs the private event loop until its answer.

Example::

    with HeadlessBrowser(profile_dir=tmp) as browser:
        browser.open("http://127.0.0.1:8080/")
        browser.wait_for("document.querySelectorAll('.tile').length == 6", 20.0)
        browser.screenshot(tmp / "page.png")
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["BrowserError", "HeadlessBrowser", "chromium_path"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(RuntimeError):
    """Chromium could not be started or driven, or a page's script failed."""


def chromium_path() -> str | None:
    """The Chromium executable on PATH (Debian's ``chromium`` first), or None."""
    return next(filter(None, map(shutil.which, _CANDIDATES)), None)


class HeadlessBrowser:
    """One headless Chromium process with one page.

    Args:
        profile_dir: Chromium's user data folder (default a new temporary one, removed on
            :meth:`close`); its ``chromium.log`` keeps the browser's output.
        window: Window width and height in pixels (the viewport is ~140 pixels lower).
        timeout: Seconds to wait for Chromium to start and for each answer.
    """

    def __init__(self, profile_dir: Path | None = None, window: tuple[int, int] = (1280, 1100),
                 timeout: float = 30.0) -> None:
        executable = chromium_path()
        if executable is None:
            raise BrowserError("chromium not found: install Debian's chromium package "
                               "(scripts/setup.sh does when run as root)")
        self._own_dir = profile_dir is None
        self.profile_dir = Path(profile_dir or tempfile.mkdtemp(prefix="rp_chromium_"))
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._session = self._ws = None
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        # --no-sandbox: CI and the developers' machines run as root, where Chromium's
        # sandbox refuses to start.
        with open(self.profile_dir / "chromium.log", "a") as log:
            self.process = subprocess.Popen(
                [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                 f"--window-size={window[0]},{window[1]}", "--remote-debugging-port=0",
                 "--remote-debugging-address=127.0.0.1",
                 f"--user-data-dir={self.profile_dir}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its renderer and helper processes: one group
        try:
            self._run(self._connect(port_file))
        except BaseException:
            self.close()
            raise

    # -- the protocol ----------------------------------------------------------------------
    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coroutine, self.timeout))

    async def _connect(self, port_file: Path) -> None:
        import aiohttp

        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with code {self.process.returncode}; "
                                   f"see {self.profile_dir / 'chromium.log'}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        while True:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"],
                                                  max_msg_size=0)
        await self._call("Page.enable", {})

    async def _call(self, method: str, params: dict) -> dict:
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events of the page come in between; only our answer counts
            message = await self._ws.receive()
            if message.type != 1:  # aiohttp.WSMsgType.TEXT
                raise BrowserError(f"the DevTools connection closed ({message.type})")
            answer = json.loads(message.data)
            if answer.get("id") == call_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def call(self, method: str, **params: Any) -> dict:
        """One DevTools command (e.g. ``Page.navigate``, url=...); its result."""
        return self._run(self._call(method, params))

    # -- what callers use ------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate the page to ``url`` (returns once navigation started)."""
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values).

        Raises:
            BrowserError: If the expression throws.
        """
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, period: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy; return its value.

        Raises:
            TimeoutError: After ``timeout`` s, with the expression's last value.
        """
        end = time.monotonic() + timeout
        value = None
        while time.monotonic() < end:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(period)
        raise TimeoutError(f"after {timeout:g} s, {expression!r} is still {value!r}")

    def screenshot(self, path: Path) -> Path:
        """Save the page's viewport as a PNG at ``path``."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the connection and Chromium's process group (SIGTERM, SIGKILL after 5 s)."""
        if self._ws is not None:
            self._loop.run_until_complete(self._ws.close())
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
        self._ws = self._session = None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._loop.close()
        if self._own_dir:
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
