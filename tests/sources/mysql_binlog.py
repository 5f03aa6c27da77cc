"""MariaDB binlog helpers for the mysql source's continuous-sync tests (MYSQL_PORT, default 3307)."""

from __future__ import annotations

import os
import time
from typing import Any

from tests.helpers import skip_or_fail

PORT = int(os.environ.get("MYSQL_PORT", "3307"))


def require_binlog(conn: Any) -> None:
    """Skip (fail under CI=true) when the server writes no row-based binlog."""
    with conn.cursor() as cur:
        cur.execute("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")
        log_bin, row_format, image = cur.fetchone()
    if (log_bin, row_format, image) != (1, "ROW", "FULL"):
        skip_or_fail(f"MariaDB on 127.0.0.1:{PORT} runs with log_bin={log_bin}, binlog_format={row_format}, "
                     f"binlog_row_image={image}: restart it with scripts/servers/mysql start (it turns the binlog on)")


def purge_binlog(conn: Any, file: str) -> None:
    """Rotate the binlog and purge every file before the new one, ``file`` included (the server
    keeps a file a replica still reads: wait for the stream's dump thread to go)."""
    with conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        current = cur.fetchone()[0]
        deadline = time.monotonic() + 30
        while True:
            cur.execute(f"PURGE BINARY LOGS TO '{current}'")
            cur.execute("SHOW BINARY LOGS")
            if file not in [row[0] for row in cur.fetchall()]:
                return
            assert time.monotonic() < deadline, f"binlog file {file} could not be purged"
            time.sleep(0.2)
