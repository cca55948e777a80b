"""Prometheus metrics of a nonstop cluster (see nonstop.metrics.collector)."""
