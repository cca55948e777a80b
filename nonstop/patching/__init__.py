"""Rolling patches and rolling guest updates: the shells around nonstop/core/patching (docs/patching.md)."""
