"""Fixtures for the API tests: a seeded SQLite store, a token file and the controller stand-in
(seeding.py holds the helpers)."""

from __future__ import annotations

from .seeding import controller, store_url, token_file  # noqa: F401
