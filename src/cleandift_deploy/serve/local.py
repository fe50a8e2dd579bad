"""The local server: the app on uvicorn in this process, no Ray (the default of `serve`).

`LocalServer` runs uvicorn in a background thread (port 0 picks a free port), so the CLI, the
tests and the benchmark start the same server the same way: `start()` returns once the socket
listens, `wait_ready()` once every model is loaded and warmed up, `stop()` shuts it down.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn

from ..errors import CleanDiftError
from .asgi import build_app
from .hub import AppConfig, ServeHub

READY_POLL_S = 0.05


class LocalServer:
    """The app on uvicorn in a daemon thread."""

    def __init__(self, config: AppConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.hub = ServeHub(config)
        self.app = build_app(self.hub)
        settings = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(settings)
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the free one chosen when started with port 0)."""
        sockets = self.server.servers[0].sockets if self.server.servers else []
        return int(sockets[0].getsockname()[1]) if sockets else self.server.config.port

    @property
    def url(self) -> str:
        """http://host:port"""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalServer:
        """Start loading the models and listening; returns once the socket is open."""
        self.hub.start()
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise CleanDiftError(
                    f"the server could not listen on {self.host}:{self.server.config.port}: "
                    "is the port in use? pick another with --port"
                )
            if time.monotonic() > deadline:
                raise CleanDiftError(f"the server did not start within {timeout_s:.0f} s")
            time.sleep(READY_POLL_S)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every model is loaded; the load error otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.hub.load_error:
                raise CleanDiftError(f"a model failed to load: {self.hub.load_error}")
            if self.hub.ready:
                return
            time.sleep(READY_POLL_S)
        raise CleanDiftError(
            f"the models were not ready after {timeout_s:.0f} s: raise --ready-timeout"
        )

    def stop(self) -> None:
        """Ask uvicorn to finish and wait for it."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
