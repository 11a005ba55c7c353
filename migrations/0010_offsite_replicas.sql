-- Off-site copies (the OFFSITE var): one task per stored object (a backup or a weekly archive)
-- copied to the S3-compatible bucket outside Cloudflare. Steps, checkpoint, lease and fencing
-- work as for every task of the engine (see shared/src/task.rs).
CREATE TABLE replicas (
  id              TEXT PRIMARY KEY,
  -- The object in R2 and its copy's key off-site (the configured prefix, then the same key).
  source_key      TEXT NOT NULL UNIQUE,
  object_kind     TEXT NOT NULL CHECK (object_kind IN ('backup', 'archive')),
  offsite_key     TEXT NOT NULL,
  state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead')),
  attempts        INTEGER NOT NULL DEFAULT 0,
  failures        INTEGER NOT NULL DEFAULT 0,
  step            INTEGER NOT NULL DEFAULT 0,
  checkpoint      TEXT,
  lease_owner     TEXT,
  lease_until     TEXT,
  lease_token     INTEGER NOT NULL DEFAULT 0,
  next_attempt_at TEXT,
  -- The local object's size and recorded SHA-256: the copy was read back against them.
  bytes           INTEGER NOT NULL,
  sha256          TEXT NOT NULL,
  -- What the off-site store reports for the copy.
  etag            TEXT,
  error           TEXT,
  -- When the local object was stored: replication lag runs from here.
  stored_at       TEXT NOT NULL,
  queued_at       TEXT NOT NULL,
  started_at      TEXT,
  finished_at     TEXT,
  updated_at      TEXT NOT NULL,
  -- Set when the copy was deleted off-site (mirrored retention), with the reason.
  deleted_at      TEXT,
  delete_reason   TEXT
);
CREATE INDEX replicas_due ON replicas (next_attempt_at) WHERE state NOT IN ('succeeded', 'dead');
CREATE INDEX replicas_by_state ON replicas (state, stored_at);

-- A copy that failed for good raises an alert like a failed backup: the alerts table is rebuilt
-- to allow its kind (SQLite cannot change a CHECK in place).
CREATE TABLE alerts_new (
  id            INTEGER PRIMARY KEY,
  kind          TEXT NOT NULL CHECK (kind IN (
                  'run_dead', 'message_rejected', 'job_failed', 'job_succeeded', 'backup_stale',
                  'backup_shrank', 'schema_changed', 'verify_failed', 'archive_member_bad',
                  'archive_dead', 'replica_dead')),
  job_id        TEXT,
  database      TEXT,
  message       TEXT NOT NULL,
  details       TEXT,
  created_at    TEXT NOT NULL,
  sent_at       TEXT,
  subject       TEXT,
  attempts      INTEGER NOT NULL DEFAULT 0,
  last_error    TEXT,
  claimed_until TEXT
);
INSERT INTO alerts_new (id, kind, job_id, database, message, details, created_at, sent_at, subject, attempts,
                        last_error, claimed_until)
  SELECT id, kind, job_id, database, message, details, created_at, sent_at, subject, attempts, last_error,
         claimed_until FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_new RENAME TO alerts;
CREATE UNIQUE INDEX alerts_once_per_subject ON alerts (kind, subject) WHERE subject IS NOT NULL;
CREATE INDEX alerts_unsent ON alerts (sent_at, id);
