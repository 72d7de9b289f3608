"""The web monitor: the daemon's SAs and statistics on a page, as JSON and as metrics.

A small HTTP server (standard library ``http.server``, one thread per request, the
server itself in a background thread) that talks to the daemon only through the
control socket, on every request:

* ``/``                the IP security monitor page (server-rendered HTML, no script,
                       refreshed by ``<meta http-equiv=refresh>``; see :mod:`.page`)
* ``/api/status``      the control API's ``status`` answer, as JSON, unchanged
* ``/api/statistics``  the control API's ``statistics`` answer, as JSON, unchanged
* ``/metrics``         the Prometheus exposition (:mod:`pyipsec.control.metrics`)

It binds 127.0.0.1:9443 by default. Binding to any other (non-loopback) address
requires a token file (0600, not readable by group or others): every request must then
carry HTTP Basic credentials whose password is the token (any user name). Without a
token the server refuses to start, so the monitor is never open to the network by
mistake. The token never appears in logs, repr() or error messages. With a certificate
and a (0600) key the server speaks HTTPS only (TLS 1.2 or later), so that the token
does not cross the network in clear; the TLS handshake runs in the request's thread,
so a slow client cannot stall the others.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pyipsec.control.client import ControlClient
from pyipsec.control.metrics import DaemonCollector, exposition
from pyipsec.control.protocol import DEFAULT_SOCKET, ControlError
from pyipsec.errors import ConfigError
from pyipsec.web.page import render_page

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9443"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# no script, no external anything; inline CSS only
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class WebStatistics:
    """A snapshot of the web monitor's counters."""

    requests: int  #: requests answered (any status)
    not_found: int  #: requests for an unknown path or with a method other than GET/HEAD
    unauthorized: int  #: requests refused for missing or wrong credentials
    daemon_errors: int  #: requests the daemon could not answer (503)
    connection_errors: int  #: connections that failed (TLS handshake, client gone, timeout)
    scrapes: int  #: /metrics scrapes
    scrape_failures: int  #: scrapes that reported pyipsec_up 0


def parse_listen(listen: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[IPV6]:PORT`` as (address, port); a ConfigError otherwise."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"expected ADDR:PORT, got {listen!r}", key="listen")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"port {port} is out of range", key="listen")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{host!r} is not an IP address", key="listen") from None
    return host, port


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _read_private(path: str, what: str, limit: int) -> bytes:
    """The content of ``path``, a regular file readable by its owner only (keys, tokens)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot open {what}: {exc.strerror}", file=path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} is not a regular file", file=path)
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{what} is accessible by group or others (mode {info.st_mode & 0o777:o}); "
                "chmod 600 it",
                file=path,
            )
        return os.read(fd, limit)
    finally:
        os.close(fd)


def read_token(path: str) -> str:
    """The token in ``path``; the file must be a regular file readable by its owner only."""
    data = _read_private(path, "token file", 4096)
    token = data.decode("utf-8", "replace").strip()
    if len(token) < 16:
        raise ConfigError("token file holds fewer than 16 characters", file=path)
    return token


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; the key file must be private (0600) like any key."""
    _read_private(key_file, "TLS key file", 1)  # permission check only
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError:
        raise ConfigError("TLS certificate not found", file=cert_file) from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "invalid"
        raise ConfigError(
            f"cannot load TLS certificate and key: {reason}", file=cert_file
        ) from None
    return context


def create_token_file(path: str) -> None:
    """Write a new random token to ``path`` (created 0600; an existing file is refused)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("token file exists already", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot create token file: {exc.strerror}", file=path) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
    finally:
        os.close(fd)


class _Handler(BaseHTTPRequestHandler):
    server_version = "pyipsec-web"
    sys_version = ""
    timeout = 30  # seconds a client may take per read: idle connections do not pile up
    monitor: WebMonitor  # set on the subclass made per server

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in the request's thread
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _not_allowed(self) -> None:
        self._head = False
        self.monitor._count("not_found")
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"method not allowed\n",
            "text/plain",
            {"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _dispatch(self, *, head: bool) -> None:
        self._head = head
        if not self.monitor._authorized(self.headers.get("Authorization")):
            self.monitor._count("unauthorized")
            self._send(
                HTTPStatus.UNAUTHORIZED,
                b"authentication required\n",
                "text/plain",
                {"WWW-Authenticate": 'Basic realm="pyipsec", charset="UTF-8"'},
            )
            return
        url = urlsplit(self.path)
        route = {
            "/": self._page,
            "/api/status": self._api_status,
            "/api/statistics": self._api_statistics,
            "/metrics": self._metrics,
        }.get(url.path)
        if route is None:
            self.monitor._count("not_found")
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        route(parse_qs(url.query))

    def _call(self, command: str) -> Any:
        return self.monitor.client().call(command)

    def _page(self, query: dict[str, list[str]]) -> None:
        refresh = self.monitor.refresh
        if "refresh" in query and query["refresh"][-1].isdigit():
            refresh = int(query["refresh"][-1])
        status: Any = None
        statistics: Any = None
        error: str | None = None
        try:
            status = self._call("status")
            statistics = self._call("statistics")
        except ControlError as exc:
            self.monitor._count("daemon_errors")
            error = str(exc)
        body = render_page(status, statistics, error=error, refresh=refresh).encode()
        code = HTTPStatus.OK if error is None else HTTPStatus.SERVICE_UNAVAILABLE
        self._send(code, body, "text/html; charset=utf-8")

    def _api(self, command: str) -> None:
        try:
            result = self._call(command)
        except ControlError as exc:
            self.monitor._count("daemon_errors")
            body = json.dumps({"error": str(exc)}).encode() + b"\n"
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json")
            return
        body = json.dumps(result, indent=2, sort_keys=True).encode() + b"\n"
        self._send(HTTPStatus.OK, body, "application/json")

    def _api_status(self, query: dict[str, list[str]]) -> None:
        self._api("status")

    def _api_statistics(self, query: dict[str, list[str]]) -> None:
        self._api("statistics")

    def _metrics(self, query: dict[str, list[str]]) -> None:
        self._send(HTTPStatus.OK, exposition(self.monitor.collector), PROMETHEUS_CONTENT_TYPE)

    def _send(
        self,
        code: HTTPStatus,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.monitor._count("requests")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not getattr(self, "_head", False):
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    monitor: WebMonitor  # set on the subclass made per server

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed connection (TLS handshake, client gone) is counted, not printed."""
        self.monitor._count("connection_errors")
        log.debug("connection from %s failed", client_address[0], exc_info=True)


class WebMonitor:
    """The web monitor server. ``start()`` binds and serves in a thread, ``close()`` stops.

    ``listen`` is ``ADDR:PORT`` (port 0 picks a free one: see :attr:`address`);
    ``token_file`` is required unless ``ADDR`` is a loopback address; ``tls_cert`` and
    ``tls_key`` (both or neither) make it HTTPS.
    """

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        *,
        socket_path: str = DEFAULT_SOCKET,
        token_file: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        refresh: int = 5,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self._token = read_token(token_file) if token_file is not None else None
        if self._token is None and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on non-loopback address {self.host} without a token file "
                "(--token-file)",
                key="listen",
            )
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("a TLS certificate needs its key and the other way round", key="tls")
        self._tls = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        if self._tls is None and not is_loopback(self.host):
            log.warning(
                "web monitor on %s without TLS: the token crosses the network in clear",
                self.host,
            )
        self.socket_path = socket_path
        self.refresh = max(0, refresh)
        self.timeout = timeout
        self.collector = DaemonCollector(socket_path, timeout=timeout)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("requests", "not_found", "unauthorized", "daemon_errors", "connection_errors"), 0
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        auth = "token" if self._token is not None else "none"
        return (
            f"WebMonitor(listen={self.host}:{self.port}, socket={self.socket_path}, "
            f"auth={auth}, tls={self._tls is not None})"
        )

    def client(self) -> ControlClient:
        return ControlClient(self.socket_path, timeout=self.timeout)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once started."""
        if self._server is None:
            return self.host, self.port
        return self._server.server_address[0], self._server.server_address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"

    def start(self) -> WebMonitor:
        handler = type("Handler", (_Handler,), {"monitor": self})
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("Server", (_Server,), {"monitor": self, "address_family": family})
        try:
            self._server = server_class((self.host, self.port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}", key="listen"
            ) from None
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pyipsec-web", daemon=True
        )
        self._thread.start()
        log.info("web monitor on %s", self.url)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> WebMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self) -> None:
        """Block until the server thread ends (the CLI's foreground mode)."""
        if self._thread is not None:
            self._thread.join()

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, sep, password = decoded.partition(":")
        return bool(sep) and hmac.compare_digest(password.encode(), self._token.encode())

    def statistics(self) -> WebStatistics:
        with self._lock:
            counts = dict(self._counts)
        scrape = self.collector.statistics()
        return WebStatistics(
            requests=counts["requests"],
            not_found=counts["not_found"],
            unauthorized=counts["unauthorized"],
            daemon_errors=counts["daemon_errors"],
            connection_errors=counts["connection_errors"],
            scrapes=scrape.scrapes,
            scrape_failures=scrape.failures,
        )
