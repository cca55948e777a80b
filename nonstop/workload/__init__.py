"""nonstop's built-in workload for process guests: a small asyncio HTTP server (see ``server.py``)."""
