"""The read side: verification, the DuckDB query engine, and (later) the auditor API."""
