"""``python -m nonstop.workload [--port N]``: run the built-in workload server."""

from nonstop.workload.server import main

main()
