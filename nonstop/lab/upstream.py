"""The outside world's stand-in: a tiny HTTP server run inside the lab's out namespace.

Role: answer ``GET /anything`` with ``<name> <client address>\n`` so reachability tests
(and people) can check that a guest or host reaches "the internet" and see which source
address arrived (after NAT: the host's address). Started by ``lab up``, stopped by pid on
``lab down``.

Must not: serve files or accept bodies.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="nonstop lab upstream HTTP responder")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--name", default="out")
    args = parser.parse_args(argv)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = f"{args.name} {self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *items: object) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer((args.bind, args.port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
