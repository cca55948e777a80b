"""Vital tasks end their process when they die (they are what keeps a host safe), but not when
cancelled. Each case runs in a child interpreter: the exit is real."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nonstop.vital import EXIT_VITAL

CASES = {
    "task raises": ("""
        async def main():
            vital(boom(), "sender")
            await asyncio.sleep(5)
            print("survived")
        """, EXIT_VITAL, "vital task sender ended: RuntimeError: boom"),
    "task returns": ("""
        async def main():
            vital(asyncio.sleep(0), "watch")
            await asyncio.sleep(5)
        """, EXIT_VITAL, "vital task watch ended: returned"),
    "task cancelled": ("""
        async def main():
            t = vital(asyncio.sleep(10), "watch")
            await asyncio.sleep(0.05)
            t.cancel()
            await asyncio.sleep(0.1)
            print("survived")
        """, 0, "survived"),
    "thread raises": ("""
        async def main():
            def run():
                raise OSError("socket gone")
            vital_thread(run, "heartbeat-sender", stopping=lambda: False)
            await asyncio.sleep(5)
        """, EXIT_VITAL, "vital task heartbeat-sender ended: OSError: socket gone"),
    "thread stopped on purpose": ("""
        async def main():
            stop = threading.Event()
            def run():
                stop.wait()
            t = vital_thread(run, "heartbeat-sender", stopping=stop.is_set)
            stop.set()
            t.join()
            print("survived")
        """, 0, "survived"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_vital(case: str) -> None:
    body, code, text = CASES[case]
    script = textwrap.dedent("""
        import asyncio, logging, threading
        from nonstop.vital import vital, vital_thread
        logging.basicConfig(level=logging.INFO)
        async def boom():
            await asyncio.sleep(0.01)
            raise RuntimeError("boom")
        """) + textwrap.dedent(body) + "\nasyncio.run(main())\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert run.returncode == code, run.stderr
    assert text in run.stdout + run.stderr
