"""Rolling patches and rolling guest updates: the shells around nonstop/core/patching (docs/patching.md)."""

SIMULATED = {"fail": 'echo "simulated patch failure on $NONSTOP_HOST" >&2; exit 3', "hang": "sleep 3600"}
"""Lab patch commands that fail (exit 3) or hang past any timeout: ``--simulate`` / ``"simulate"``."""
