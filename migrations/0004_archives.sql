-- Weekly archives: the jobs that build them, the archives in R2, and what each one holds.

-- One request to archive an ISO week (the archiver's cron or POST /archive). Steps, checkpoint
-- and lease work as for backup runs; `failures` counts consecutive failed deliveries of the
-- current step (the archiver gives up after ARCHIVE_MAX_ATTEMPTS of them).
CREATE TABLE archive_jobs (
  id           TEXT PRIMARY KEY,
  week         TEXT NOT NULL,
  trigger      TEXT NOT NULL CHECK (trigger IN ('cron', 'http')),
  state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead')),
  outcome      TEXT CHECK (outcome IN ('archived', 'already_archived', 'nothing_to_archive')),
  attempts     INTEGER NOT NULL DEFAULT 0,
  failures     INTEGER NOT NULL DEFAULT 0,
  step         INTEGER NOT NULL DEFAULT 0,
  checkpoint   TEXT,
  lease_owner  TEXT,
  lease_until  TEXT,
  r2_key       TEXT NOT NULL,
  bytes        INTEGER,
  sha256       TEXT,
  members      INTEGER,
  excluded     INTEGER,
  -- JSON report of the retention cleanup that followed the archive.
  cleanup      TEXT,
  error        TEXT,
  requested_at TEXT NOT NULL,
  queued_at    TEXT NOT NULL,
  started_at   TEXT,
  finished_at  TEXT,
  updated_at   TEXT NOT NULL
);
-- At most one unfinished job per week: a second request joins the first.
CREATE UNIQUE INDEX archive_jobs_one_active_per_week ON archive_jobs (week)
  WHERE state IN ('queued', 'running', 'retrying');
CREATE INDEX archive_jobs_by_queued_at ON archive_jobs (queued_at);

-- Every verified weekly archive in R2. Deleted ones stay, marked with when and why.
CREATE TABLE archives (
  key           TEXT PRIMARY KEY,
  week          TEXT NOT NULL,
  -- The week's last day (Sunday), YYYY-MM-DD: archives sort and age with the dailies.
  date          TEXT NOT NULL,
  job_id        TEXT REFERENCES archive_jobs (id),
  bytes         INTEGER NOT NULL,
  sha256        TEXT NOT NULL,
  members       INTEGER NOT NULL,
  excluded      INTEGER NOT NULL,
  created_at    TEXT NOT NULL,
  verified_at   TEXT NOT NULL,
  deleted_at    TEXT,
  delete_reason TEXT
);

-- The dailies an archive holds (path set) or left out (excluded_reason set).
CREATE TABLE archive_members (
  archive_key     TEXT NOT NULL REFERENCES archives (key),
  source_key      TEXT NOT NULL,
  path            TEXT,
  database        TEXT NOT NULL,
  date            TEXT NOT NULL,
  bytes           INTEGER NOT NULL,
  sha256          TEXT NOT NULL,
  rows            INTEGER NOT NULL,
  excluded_reason TEXT,
  PRIMARY KEY (archive_key, source_key)
);
CREATE INDEX archive_members_by_source ON archive_members (source_key);

-- Alerts gain the kinds of the archiver and of the checks to come, and structured details.
-- Nothing references alerts, so it is rebuilt in place to widen its CHECK.
CREATE TABLE alerts_new (
  id          INTEGER PRIMARY KEY,
  kind        TEXT NOT NULL CHECK (kind IN (
                'run_dead', 'message_rejected', 'job_failed', 'job_succeeded', 'backup_stale',
                'backup_shrank', 'schema_changed', 'verify_failed', 'archive_member_bad',
                'archive_dead')),
  job_id      TEXT,
  database    TEXT,
  message     TEXT NOT NULL,
  details     TEXT,
  created_at  TEXT NOT NULL,
  sent_at     TEXT
);
INSERT INTO alerts_new (id, kind, job_id, database, message, created_at, sent_at)
  SELECT id, kind, job_id, database, message, created_at, sent_at FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_new RENAME TO alerts;
