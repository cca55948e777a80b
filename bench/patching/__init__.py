"""bench/patching: a 3-host rolling patch under load (``python -m bench.patching``)."""
