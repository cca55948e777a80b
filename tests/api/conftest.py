"""Fixtures for the API tests: a seeded SQLite store and a token file (seeding.py holds the helpers)."""

from __future__ import annotations

from .seeding import store_url, token_file  # noqa: F401
