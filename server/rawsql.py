"""Driver-level SQL for the server's hot paths.

SQLAlchemy Core prepares every execution (a compiled-cache lookup, then each parameter
processed by its column's type) at a cost close to SQLite's own work for a small statement.
The statements run for every event and every send therefore go to the driver as pre-built
SQL, in the driver's parameter style, with each value converted by its column's own bind
processor, so that what is stored is exactly what SQLAlchemy would store (JSON text,
SQLite's timestamp text)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import JSON, Connection, Engine, Row, Table

Processor = Callable[[Any], Any]

#: Rows per INSERT statement by default: SQLite takes at most 32,766 parameters, and the SQL
#: text of each row count is kept.
ROWS_PER_STATEMENT = 200


def mark(engine: Engine) -> str:
    """The driver's parameter placeholder: `?` for sqlite3, `%s` for psycopg."""
    return "?" if engine.dialect.name == "sqlite" else "%s"


def bind_processor(engine: Engine, table: Table, column: str) -> Processor:
    """The conversion SQLAlchemy applies to values of `table.column` (identity if none)."""
    impl = table.c[column].type.dialect_impl(engine.dialect)
    return impl.bind_processor(engine.dialect) or _same


def _same(value: Any) -> Any:
    return value


class RowInserter:
    """Multi-row `INSERT INTO table (columns) VALUES (…), (…) [suffix] [RETURNING …]`: one
    statement for up to `rows_per_statement` rows, its SQL built once per row count."""

    def __init__(
        self,
        engine: Engine,
        table: Table,
        columns: Sequence[str],
        *,
        suffix: str = "",
        returning: Sequence[str] = (),
        rows_per_statement: int = ROWS_PER_STATEMENT,
    ) -> None:
        placeholder = mark(engine)
        postgres = engine.dialect.name == "postgresql"
        self._processors = [bind_processor(engine, table, c) for c in columns]
        self._row = (
            "("
            + ", ".join(
                f"CAST({placeholder} AS JSON)"
                if postgres and isinstance(table.c[c].type, JSON)
                else placeholder
                for c in columns
            )
            + ")"
        )
        self._head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        self._tail = (f" {suffix}" if suffix else "") + (
            f" RETURNING {', '.join(returning)}" if returning else ""
        )
        self._returns = bool(returning)
        self._rows_per_statement = rows_per_statement
        self._sql: dict[int, str] = {}

    def insert(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[Row[Any]]:
        """Insert `rows` (values in the order of `columns`), in order; returns the `returning`
        columns of the rows inserted (none without `returning`)."""
        returned: list[Row[Any]] = []
        for start in range(0, len(rows), self._rows_per_statement):
            chunk = rows[start : start + self._rows_per_statement]
            sql = self._sql.get(len(chunk))
            if sql is None:
                sql = self._sql[len(chunk)] = (
                    self._head + ", ".join([self._row] * len(chunk)) + self._tail
                )
            params = [
                process(value)
                for row in chunk
                for process, value in zip(self._processors, row, strict=True)
            ]
            result = conn.exec_driver_sql(sql, tuple(params))
            if self._returns:
                returned += result.all()
        return returned
