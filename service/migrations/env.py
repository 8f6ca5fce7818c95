"""Alembic's environment for the decision log: always called by `adaudit.service.schema` with an
open connection (config.attributes["connection"]) inside the transaction it holds, never from an
alembic.ini. Offline (SQL script) mode is not supported."""

from alembic import context

from adaudit.service.schema import VERSION_TABLE
from adaudit.service.tables import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("the decision log's migrations run through `adaudit db upgrade`, with a connection")
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
