"""Dumps made by the consumer on local D1 restore exactly, through both restore clients:
`sqlite3` and `wrangler d1 execute --local --file`, value by value and storage class by class."""

import sqlite3
import subprocess

import pytest

from stack import exact_rows_sql, scratch_d1_config

USER_TABLES = ("SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' "
               "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' "
               "AND name NOT IN (SELECT name FROM pragma_table_list WHERE type = 'shadow') ORDER BY name")


def restore_both_ways(stack, database, tmp_path):
    """Backs `database` up through the stack, then restores the dump with sqlite3 and with
    `wrangler d1 execute --file` into a fresh local D1 database."""
    r = stack.admin("POST", "/trigger", {"databases": [database]})
    assert r.status == 202, r.body
    job = stack.wait_for_job(r.json()["jobId"])
    assert job["status"] == "completed", job
    (run,) = job["runs"]
    dump = tmp_path / f"{database}.sql"
    stack.r2_get(run["r2Key"], dump)

    shell_db = tmp_path / f"{database}-shell.db"
    subprocess.run(["sqlite3", str(shell_db)], input=dump.read_bytes(), check=True, capture_output=True)
    restored = f"{database}-restored"
    config = scratch_d1_config(tmp_path, restored)
    stack.wrangler("d1", "execute", restored, "--local", "--file", str(dump), config=str(config))
    return dump, shell_db, restored, str(config)


def compare_all_tables(stack, database, shell_db, restored, config, extra_tables=()):
    """Every user table (and the named virtual ones), row by row, in all three databases."""
    tables = [r["name"] for r in stack.d1_query(database, USER_TABLES)] + list(extra_tables)
    column_lists = stack.d1_queries(database, [
        f"SELECT name FROM pragma_table_xinfo('{t}') WHERE hidden IN (0, 2, 3)" for t in tables])
    without_rowid = {r["name"] for r in stack.d1_query(database, "SELECT name FROM pragma_table_list WHERE wr = 1")}
    sqls = [exact_rows_sql(t, [c["name"] for c in cols], t not in without_rowid)
            for t, cols in zip(tables, column_lists)]

    expected = stack.d1_queries(database, sqls)
    via_d1 = stack.d1_queries(restored, sqls, config=config)
    with sqlite3.connect(shell_db) as db:
        via_shell = [[list(row) for row in db.execute(sql)] for sql in sqls]
    for table, want, d1, shell in zip(tables, expected, via_d1, via_shell):
        want = [list(row.values()) for row in want]
        assert shell == want, f"sqlite3 restore of {database}.{table} differs"
        assert [list(row.values()) for row in d1] == want, f"wrangler d1 execute restore of {database}.{table} differs"
    return tables, expected


@pytest.fixture(scope="module")
def hostile(stack, tmp_path_factory):
    return restore_both_ways(stack, "hostile", tmp_path_factory.mktemp("hostile"))


def test_hostile_database_restores_exactly_through_both_clients(stack, hostile):
    dump, shell_db, restored, config = hostile
    tables, expected = compare_all_tables(stack, "hostile", shell_db, restored, config, extra_tables=["docs"])
    assert set(tables) >= {"vals", "strict_t", "wr", "sparse", "auto", "gen", "fa", "fb", "node", "big", "docs", "src", "audit"}
    counts = dict(zip(tables, map(len, expected)))
    assert counts["vals"] == 24 and counts["big"] == 2 and counts["docs"] == 3 and counts["audit"] == 0


def test_hostile_dump_is_importable_and_keeps_counters_indexes_and_search(stack, hostile):
    dump, shell_db, restored, config = hostile
    text = dump.read_text()
    assert "Infinity" not in text and "\r" not in text and "\0" not in text
    longest = max(len(s) for s in text.split(";\n"))
    assert longest < 100_000, f"a statement of {longest} bytes would not import into D1"

    checks = {
        "SELECT seq FROM sqlite_sequence WHERE name = 'auto'": 4,
        "SELECT count(*) FROM audit": 0,
        "SELECT rowid FROM ext WHERE ext MATCH 'beta'": 1,
        "SELECT rowid FROM docs WHERE docs MATCH 'world'": 5,
        "SELECT count(*) FROM sqlite_master WHERE name IN ('sparse_live', 'sparse_lower', 'big_sizes', 'sparse_audit')": 4,
        "SELECT count(*) FROM pragma_foreign_key_check": 0,
    }
    with sqlite3.connect(shell_db) as db:
        for sql, want in checks.items():
            assert db.execute(sql).fetchone()[0] == want, f"sqlite3: {sql}"
    for (sql, want), rows in zip(checks.items(), stack.d1_queries(restored, list(checks), config=config)):
        assert list(rows[0].values())[0] == want, f"d1: {sql}"


def test_chinook_restores_exactly_through_both_clients(stack, tmp_path):
    dump, shell_db, restored, config = restore_both_ways(stack, "chinook", tmp_path)
    tables, _ = compare_all_tables(stack, "chinook", shell_db, restored, config)
    assert len(tables) == 11
    # One row of scalar subqueries: D1 caps the terms of a compound SELECT (UNION ALL).
    counts_sql = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{t}") AS "{t}"' for t in tables)
    (source_counts,) = stack.d1_query("chinook", counts_sql)
    with sqlite3.connect(shell_db) as db:
        shell_counts = {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    (d1_counts,) = stack.d1_queries(restored, [counts_sql], config=config)[0]
    assert shell_counts == source_counts == d1_counts
    assert source_counts["Track"] == 3503


def test_a_dump_over_several_parts_and_steps_restores_exactly(stack, tmp_path):
    dump, shell_db, restored, config = restore_both_ways(stack, "bulk", tmp_path)
    assert dump.stat().st_size > 5 * 1024 * 1024, "bulk should need more than one R2 part"
    tables, expected = compare_all_tables(stack, "bulk", shell_db, restored, config)
    assert tables == ["chunks"] and len(expected[0]) == 1200
