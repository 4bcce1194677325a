"""The database: models, engines, sessions and migrations."""
