"""The REST API, dashboard and metrics server of a nonstop cluster (docs/api.md, docs/dashboard.md).

``create_app`` (app.py) builds the FastAPI app; ``ApiServer`` (server.py) runs it; the CLI client
is client.py. Reads come from one store snapshot (snapshot.py); writes are desired-state records
with audit events (actions.py); chaos goes to the lab (chaos.py).
"""
