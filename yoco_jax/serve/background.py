"""uvicorn serving an app from a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time

try:
    import uvicorn
except ImportError as e:
    raise ImportError(f"serving needs uvicorn ({e}): pip install -e '.[serve]'") from e


class BackgroundServer:
    """Serves `app` on a socket bound here (port 0: any free port), so `url` is known before
    the first request. `stop()` does what SIGTERM does: stop listening, finish the requests in
    flight, run the app's shutdown (the engine drains), return."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level="warning"):
        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start (see the log above)")
            time.sleep(0.01)

    def stop(self, timeout: float | None = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
