"""Storage: the only users of SQLAlchemy. ``models`` holds the tables, ``db`` the engine and transactions,
``queries`` the keyword-only functions everything else calls."""
