"""`engine db upgrade --db DB`: bring the log's tables to this engine's version (SQLite or PostgreSQL)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from callstate.logs import add_db, where
from engine.store import StoreError
from logstore import is_postgres
from logstore.sqlite import SQLITE_MIGRATIONS, SqliteStore, sqlite_version

HELP = "manage the call log's tables: `engine db upgrade` applies pending schema migrations"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["upgrade", "version"],
                   help="upgrade: apply pending migrations; version: show the tables' version")
    add_db(p)


def _sqlite_version(path: str) -> int:
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return sqlite_version(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read ({exc})") from None
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    try:
        if is_postgres(args.db):
            from logstore.postgres import MIGRATIONS, current_version, upgrade

            latest = len(MIGRATIONS)
            before, after = upgrade(args.db) if args.action == "upgrade" else (current_version(args.db),) * 2
        else:
            latest = len(SQLITE_MIGRATIONS)
            if args.action == "version" and not Path(args.db).exists():
                raise StoreError(f"{args.db}: no such log")
            before = _sqlite_version(args.db) if Path(args.db).exists() else 0
            if args.action == "upgrade":
                SqliteStore(args.db).close()  # opening for writing runs the pending migrations
            after = _sqlite_version(args.db) if args.action == "upgrade" else before
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.action == "version":
        print(f"{where(args.db)}: tables at version {before} (this engine: {latest})")
    elif before == after:
        print(f"{where(args.db)}: already at version {after}; nothing to do")
    else:
        print(f"{where(args.db)}: upgraded the tables from version {before} to {after}")
    return 0
