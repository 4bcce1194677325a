"""Alembic migrations: the only source of depin's schema."""
