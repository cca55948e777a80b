"""Component redundancy shell: BMC watcher, metrics, chaos helpers, guest disk mirror (docs/components.md)."""
