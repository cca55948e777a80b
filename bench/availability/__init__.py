"""bench.availability: the availability tour (``nonstop demo``) run non-interactively, as figures."""
