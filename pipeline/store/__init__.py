"""The database: one SQLAlchemy engine (SQLite or PostgreSQL), its tables, its migrations."""
