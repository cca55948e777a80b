"""Rolling patches, pure: the planner (planner.py) and the per-host step machine (steps.py)."""
