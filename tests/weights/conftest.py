"""A local web server that stands in for the weights' hosts and the Hugging Face Hub."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHost:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1, with the headers huggingface_hub reads.

    ``truncate`` sends half of each body (after announcing the full length); ``requests``
    records every ``(method, path)``.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.truncate = False
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def _answer(self, send_body: bool) -> None:
                host.requests.append((self.command, self.path))
                body = host.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.end_headers()
                if send_body:
                    self.wfile.write(body[: len(body) // 2] if host.truncate else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.address + path

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def block_network(monkeypatch):
    """Every connection fails at once, except to this machine (the fake host); no proxies."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1", "localhost"):
            return real_connect(self, address)
        raise OSError(101, "Network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", connect)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


@pytest.fixture
def host(block_network):
    """The fake host; the network beyond it is blocked."""
    running = FakeHost()
    yield running
    running.close()


@pytest.fixture
def hub(host, monkeypatch):
    """The fake host as the Hugging Face Hub (``HF_ENDPOINT``): files go in ``/<org>/<repo>/resolve/main/<file>``."""
    monkeypatch.setenv("HF_ENDPOINT", host.address)
    return host
