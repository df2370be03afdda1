"""The engine's schema migrations (Alembic revisions in versions/), applied by `engine.migrate.upgrade`
from `engine.db.make_engine`. A schema change is a new revision file there, whose
``down_revision`` is the newest one's; never an edit of a released revision."""
