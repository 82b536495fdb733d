"""The one-trip SQLite adapter (service/db/sqlite_driver.py) answers exactly as SQLAlchemy's stock one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.db.session import create_engine
from service.db.sqlite_driver import OneTripCursor
from service.settings import Settings

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(20), unique=True, nullable=False),
    Column("n", Integer, nullable=False),
)


async def _script(engine: AsyncEngine) -> list[Any]:
    """Every kind of call the service makes, with what each answered."""
    seen: list[Any] = []
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    async with engine.begin() as connection:
        result = await connection.execute(insert(items).values(name="a", n=1))
        seen.append(("inserted pk", result.inserted_primary_key))
        result = await connection.execute(insert(items), [{"name": f"m{i}", "n": i} for i in range(5)])
        seen.append(("executemany rowcount", result.rowcount))
        returned = await connection.execute(
            insert(items).values(name="r", n=7).returning(items.c.id, items.c.n)
        )
        seen.append(("returning", [tuple(row) for row in returned]))
        moved = await connection.execute(update(items).where(items.c.n >= 3).values(n=items.c.n + 10))
        seen.append(("update rowcount", moved.rowcount))
        seen.append(("nothing matched", (await connection.execute(select(items).where(items.c.n < 0))).all()))
    async with engine.connect() as connection:
        rows = await connection.execute(select(items.c.name, items.c.n).order_by(items.c.id))
        seen.append(("keys", list(rows.keys())))
        seen.append(("rows", [tuple(row) for row in rows]))
        seen.append(("scalar", (await connection.execute(text("SELECT count(*) FROM items"))).scalar()))
        streamed = await connection.stream(select(items.c.n).order_by(items.c.id))  # the stock server cursor
        seen.append(("streamed", [row.n async for row in streamed]))
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(insert(items).values(name="a", n=2))
    with pytest.raises(OperationalError):
        async with engine.connect() as connection:
            await connection.execute(text("SELECT nothing FROM nowhere"))
    async with engine.connect() as connection:  # the failed insert rolled back whole
        seen.append(("after errors", (await connection.execute(text("SELECT count(*) FROM items"))).scalar()))
    await engine.dispose()
    return seen


async def test_the_one_trip_adapter_answers_as_the_stock_one(tmp_path: Path) -> None:
    ours = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'ours.db'}"))
    stock = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'stock.db'}")
    async with ours.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection.cursor(), OneTripCursor)  # type: ignore[union-attr]
    assert await _script(ours) == await _script(stock)


async def test_a_statement_is_one_trip_to_the_connections_thread(tmp_path: Path) -> None:
    """What the adapter exists for: open, execute, fetch and close in one queued call, not four."""
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'trips.db'}"))
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))  # connected, PRAGMAs done
        raw = await connection.get_raw_connection()
        driver = raw.dbapi_connection._connection  # type: ignore[union-attr]
        trips = 0
        queue_call = driver._execute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal trips
            trips += 1
            return await queue_call(*args, **kwargs)

        driver._execute = counted
        try:
            assert (await connection.execute(text("SELECT 41 + 1"))).scalar() == 42
        finally:
            driver._execute = queue_call
    await engine.dispose()
    assert trips == 1
