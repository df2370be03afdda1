"""The dashboard's schema migrations (Alembic revisions in versions/), applied by
`dashboard.repositories.tables.create` through `engine.migrate.upgrade`. A schema change is a
new revision file there, whose ``down_revision`` is the newest one's; never an edit of a
released revision."""
