"""Every service's Alembic migrations build exactly the schema its models declare (a column added to a model
without a migration, or a migration without the model, fails here), on a fresh database each."""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from shared.migrate import upgrade_async
from tests.harness import Infra, fresh_database


@pytest.mark.parametrize("service", ["issuer", "sync", "reconciler", "notifier", "taxstore"])
async def test_migrations_match_the_models(infra: Infra, service: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    app = importlib.import_module(f"services.{service}.app")
    models = importlib.import_module(f"services.{service}.models")
    schema = models.SCHEMA if hasattr(models, "SCHEMA") else service
    url = await fresh_database(infra, f"migrations_{service}_{uuid.uuid4().hex[:8]}")
    await upgrade_async(migrations_dir=app.MIGRATIONS, database_url=url, schema=schema)

    def ours(name: str | None, type_: str, parent_names: Any) -> bool:
        return name == schema if type_ == "schema" else name != "alembic_version"

    def diff(conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"include_schemas": True, "compare_type": True,
                                                     "include_name": ours})
        return list(compare_metadata(ctx, models.metadata))

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == [], f"{service}: migrations and models differ"
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names(schema=schema))
        assert tables, f"{service}: the migrations created no tables in schema {schema!r}"
    finally:
        await engine.dispose()
