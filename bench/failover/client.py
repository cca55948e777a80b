"""The benchmark's client: GETs through a 127.0.0.1 port as fast as it can, one connection per
request, recording (time, guest, host) of every answer and every failure with its error."""

from __future__ import annotations

import json
import threading
import time
import urllib.request


class Client:
    def __init__(self, port: int, timeout: float = 10.0, threads: int = 2) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.timeout = timeout
        self.answers: list[tuple[float, str, str]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:  # noqa: S310 (loopback)
                    body = json.loads(resp.read())
                self.answers.append((time.time(), str(body.get("guest")), str(body.get("host"))))
            except Exception as exc:  # every failure counts
                self.failures.append((time.time(), repr(exc)[:200]))
            time.sleep(0.002)

    def start(self) -> Client:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for t, _ in self.failures if start <= t <= end)

    def first_answer(self, since: float, guest: str | None = None, not_host: str | None = None) -> float | None:
        for t, g, h in list(self.answers):
            if t >= since and (guest is None or g == guest) and (not_host is None or h != not_host):
                return t
        return None
