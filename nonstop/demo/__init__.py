"""``nonstop demo``: a scripted, bounded availability tour of a lab cluster (load, faults, report, plot)."""
