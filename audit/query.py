"""DuckDB over the sealed Parquet in S3, with a `records` view over the Hive layout.

The httpfs extension is loaded from the `duckdb-extension-httpfs` wheel in site-packages;
extension auto-install and auto-load are off, so nothing is ever downloaded at run time.
Plain metadata columns are queryable; `content` stays ciphertext.

User SQL (`strongroom query`, saved-query holds) is read-only by construction: exactly one
statement, of a type that only reads (DuckDB's own parser decides), on a connection that can
reach nothing but the archive's `records/` prefix (no local files, no URLs, no other bucket;
`enable_external_access` off with that one allowed directory, the configuration locked), with
read-only S3 credentials where the store has them (the embedded default does).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import duckdb

from archiver.errors import InvalidInput


class QueryError(InvalidInput):
    """The query could not run (bad SQL, empty archive, store unreachable)."""

    code = "query_failed"


class EmptyArchive(QueryError):
    """No sealed segment exists yet: nothing for a query to read."""


def extension_path(package: str = "duckdb_extension_httpfs") -> pathlib.Path:
    module = __import__(package)
    found = sorted(pathlib.Path(module.__path__[0]).rglob("*.duckdb_extension"))
    if not found:
        raise QueryError(f"{package} is installed but carries no .duckdb_extension file")
    return found[-1]


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    region: str = "us-east-1"


@dataclass(frozen=True, slots=True)
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]


READ_ONLY_STATEMENTS = frozenset({duckdb.StatementType.SELECT})


def one_read_only_statement(sql: str) -> None:
    """`QueryError` unless `sql` is exactly one statement that only reads."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"not SQL: {e}") from e
    if len(statements) != 1:
        raise QueryError(f"one statement at a time ({len(statements)} given)")
    if statements[0].type not in READ_ONLY_STATEMENTS:
        raise QueryError(f"only queries that read are run here, not {statements[0].type.name}")


class QueryEngine:
    def __init__(self, location: S3Location) -> None:
        self.location = location

    def connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                                     "allow_persistent_secrets": False})
        con.execute(f"LOAD {_sql_str(str(extension_path()))}")
        loc = self.location
        opts = [f"REGION {_sql_str(loc.region)}", "URL_STYLE 'path'"]
        if loc.access_key:
            opts += [f"KEY_ID {_sql_str(loc.access_key)}", f"SECRET {_sql_str(loc.secret_key or '')}"]
        if loc.endpoint_url:
            url = urlparse(loc.endpoint_url)
            opts += [f"ENDPOINT {_sql_str(url.netloc)}", f"USE_SSL {'true' if url.scheme == 'https' else 'false'}"]
        records = f"s3://{loc.bucket}/records/"
        opts.append(f"SCOPE {_sql_str(records)}")  # the credentials go to this prefix only
        con.execute(f"CREATE TEMPORARY SECRET strongroom_s3 (TYPE s3, {', '.join(opts)})")
        glob = _sql_str(f"{records}*/*/*.parquet")
        con.execute(
            f"CREATE TEMPORARY VIEW records AS SELECT * FROM read_parquet({glob}, hive_partitioning = true, "
            "hive_types = {'stream': VARCHAR, 'date': DATE})"
        )
        # Queries (and saved-query holds) read the archive, nothing else: no local files, no URLs,
        # no other prefix or bucket, and no setting can be changed back by the query itself.
        con.execute(f"SET allowed_directories = [{_sql_str(records)}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def query(self, sql: str) -> Result:
        one_read_only_statement(sql)
        con = self.connect()
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            return Result(columns, cur.fetchall())
        except duckdb.IOException as e:
            if "No files found" in str(e):
                raise EmptyArchive("the archive holds no sealed segments yet") from e
            raise QueryError(str(e)) from e
        except duckdb.Error as e:
            raise QueryError(str(e)) from e
        finally:
            con.close()
