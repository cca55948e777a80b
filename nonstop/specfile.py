"""Loading a cluster spec from YAML (placeholder until the loader lands)."""
