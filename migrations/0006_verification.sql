-- Verified backups and restores as operations.

-- What each table of a dump held: its row count (already) and the digest of its rows, in the
-- order the dump has them. Verification compares a restored copy with these.
ALTER TABLE backup_tables ADD COLUMN sha256 TEXT;
ALTER TABLE backup_tables ADD COLUMN position INTEGER;

-- The latest verification of a run's dump.
ALTER TABLE runs ADD COLUMN verify_state TEXT
  CHECK (verify_state IN ('pending', 'verifying', 'verified', 'verify_failed', 'skipped'));
ALTER TABLE runs ADD COLUMN verify_operation TEXT;
-- The first table that differed (verify_failed).
ALTER TABLE runs ADD COLUMN verify_table TEXT;
-- What was wrong, or why verification was skipped.
ALTER TABLE runs ADD COLUMN verify_detail TEXT;
ALTER TABLE runs ADD COLUMN verify_ms INTEGER;
ALTER TABLE runs ADD COLUMN verified_at TEXT;

-- Verifications and restores, each run in steps by the consumer (queue restore-jobs).
CREATE TABLE operations (
  id                TEXT PRIMARY KEY,
  kind              TEXT NOT NULL CHECK (kind IN ('verify', 'restore')),
  state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead')),
  -- The backup restored: its key, its database and (for verifications) its run.
  source_key        TEXT NOT NULL,
  database          TEXT NOT NULL,
  run_id            TEXT REFERENCES runs (id),
  -- Set when the dump is read out of a weekly archive.
  archive_key       TEXT,
  -- The configured database restored into; NULL for a verification (the scratch database).
  target            TEXT,
  table_name        TEXT,
  -- The backup of the target taken before a restore over its data.
  pre_backup_job_id TEXT REFERENCES jobs (id),
  plan              TEXT NOT NULL,
  step              INTEGER NOT NULL DEFAULT 0,
  checkpoint        TEXT,
  attempts          INTEGER NOT NULL DEFAULT 0,
  failures          INTEGER NOT NULL DEFAULT 0,
  lease_owner       TEXT,
  lease_until       TEXT,
  outcome           TEXT,
  failed_table      TEXT,
  error             TEXT,
  requested_at      TEXT NOT NULL,
  started_at        TEXT,
  finished_at       TEXT,
  updated_at        TEXT NOT NULL
);
CREATE INDEX operations_by_requested_at ON operations (requested_at);
CREATE INDEX operations_by_run ON operations (run_id);

-- Exclusive use of a database across the steps of an operation (the scratch database, or a
-- restore's target): held by one operation until it ends or its lease runs out.
CREATE TABLE locks (
  name  TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  until TEXT NOT NULL
);
