"""The demo's web application: a few HTML pages served from PostgreSQL through psycopg 3.

Run inside server-a::

    PGPASSWORD=... python demo/webapp.py --listen 0.0.0.0 --port 8080 \
        --dsn "host=10.77.0.20 dbname=orders user=webapp sslmode=disable"

Pages:

* ``GET /health``: ``ok`` (no database), for readiness checks;
* ``GET /orders``: every order as an HTML table (one query);
* ``GET /orders/N``: one order.

Each request opens its own database connection, so the application never notices when the
path to the database changes underneath it (plain TCP first, then ESP once IPsec is on): it
is transparent, which is the point. Database errors become a 503 page naming the error.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

log = logging.getLogger("webapp")

ORDERS_QUERY = "SELECT id, customer, item, quantity, note FROM orders ORDER BY id"
ORDER_QUERY = "SELECT id, customer, item, quantity, note FROM orders WHERE id = %s"
COLUMNS = ("id", "customer", "item", "quantity", "note")


def fetch(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one query on a fresh connection and return all rows."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


def render(title: str, rows: list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>\n" for row in rows
    )
    return (
        f"<!doctype html><html><head><title>{html.escape(title)}</title></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<table>\n<tr>{head}</tr>\n{body}</table>\n"
        "</body></html>\n"
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "pyipsec-demo/1"
    dsn = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/health":
            self._send(HTTPStatus.OK, "ok\n", "text/plain")
            return
        try:
            if path in ("/", "/orders"):
                self._send(HTTPStatus.OK, render("Orders", fetch(self.dsn, ORDERS_QUERY)))
                return
            if path.startswith("/orders/") and path[8:].isdigit():
                rows = fetch(self.dsn, ORDER_QUERY, (int(path[8:]),))
                if rows:
                    self._send(HTTPStatus.OK, render(f"Order {path[8:]}", rows))
                    return
            self._send(HTTPStatus.NOT_FOUND, "not found\n", "text/plain")
        except psycopg.Error as exc:
            log.warning("database error: %s", exc)
            message = f"database unavailable: {type(exc).__name__}: {exc}\n"
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, message, "text/plain")

    def _send(self, status: HTTPStatus, text: str, ctype: str = "text/html") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.info("%s %s", self.address_string(), format % args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--dsn", required=True, help="libpq connection string, no password")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s"
    )
    Handler.dsn = args.dsn
    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    log.info("serving on %s:%d", args.listen, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
