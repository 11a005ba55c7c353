"""Exports that outgrow one invocation: the session stack's consumer may make only a few queries
per invocation, so its exports continue over several queue messages. Their dumps must be the
dump a single invocation writes, byte for byte, with nothing left behind in R2."""

import gzip
import uuid

import pytest



def back_up(stack, database, tmp_path):
    r = stack.admin("POST", "/trigger", {"databases": [database]})
    assert r.status == 202, r.body
    job = stack.wait_for_job(r.json()["jobId"], timeout=180)
    assert job["status"] == "completed", job
    (run,) = job["runs"]
    stored = stack.r2_get(run["r2Key"], tmp_path / f"{uuid.uuid4().hex}.dump")
    return run, stored


def without_time_and_bookmark(sql: bytes) -> bytes:
    """Drops the two header lines that say when and at which D1 state (bookmark) the export
    ran, which two exports from two stacks cannot share; every other byte must be the same."""
    lines = sql.split(b"\n")
    assert lines[4].startswith(b"-- created: ") and lines[5].startswith(b"-- bookmark: "), lines[:7]
    return b"\n".join(lines[:4] + lines[6:])


@pytest.mark.parametrize("database", ["chinook", "demo", "bulk"])
def test_an_export_over_many_messages_is_the_one_shot_dump(stack, roomy_stack, database, tmp_path):
    stepped_run, stepped = back_up(stack, database, tmp_path)
    single_run, single = back_up(roomy_stack, database, tmp_path)
    # One step exports everything; a multipart dump (bulk) is completed in a step of its own.
    assert single_run["step"] == (2 if database == "bulk" else 1)
    assert stepped_run["step"] >= 3, f"expected the small budget to need several steps: {stepped_run}"

    if database == "demo":
        # gzip: a step closes its last member early, so the compressed bytes differ but the SQL may not.
        assert stepped[:2] == single[:2] == b"\x1f\x8b"
        stepped, single = gzip.decompress(stepped), gzip.decompress(single)
    assert without_time_and_bookmark(stepped) == without_time_and_bookmark(single)
    assert stepped_run["rows"] == single_run["rows"] and stepped_run["tables"] == single_run["tables"]
    if database == "bulk":
        # Over one 5 MiB part: a multipart upload, resumed across steps, with tails between.
        assert len(stepped) > 5 * 1024 * 1024 and stepped_run["rows"] == 1200


def test_continued_exports_leave_no_staging_objects_or_open_uploads(stack, tmp_path):
    run, _ = back_up(stack, "chinook", tmp_path)
    assert run["step"] > 1
    assert stack.r2_objects("staging/") == {}
    assert stack.r2_open_uploads() == []


def test_a_single_put_carries_its_checksum_and_counts_as_custom_metadata(roomy_stack, tmp_path):
    run, stored = back_up(roomy_stack, "hostile", tmp_path)
    custom = roomy_stack.r2_objects(run["r2Key"])[run["r2Key"]]["custom"]
    assert custom["sha256"] == run["sha256"]
    assert custom["bytes"] == str(len(stored))
    assert custom["rows"] == str(run["rows"]) and custom["tables"] == str(run["tables"])
    assert custom["database"] == "hostile" and custom["job"] in run["r2Key"]
