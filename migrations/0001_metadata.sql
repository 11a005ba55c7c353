-- Metadata of the D1 backup system: jobs, their runs (one per database) and the inventory of
-- backups in R2. Timestamps are RFC 3339 UTC text with milliseconds, so they sort as text.

-- One backup request: a cron night or an HTTP trigger. Its status is derived from its runs.
CREATE TABLE jobs (
  id           TEXT PRIMARY KEY,
  kind         TEXT NOT NULL CHECK (kind IN ('daily', 'manual')),
  trigger      TEXT NOT NULL CHECK (trigger IN ('cron', 'http')),
  reason       TEXT,
  -- The cron's scheduled time (it names the dailies) or the time of the HTTP request.
  requested_at TEXT NOT NULL,
  created_at   TEXT NOT NULL
);
CREATE INDEX jobs_by_created_at ON jobs (created_at);

-- One database within one job.
CREATE TABLE runs (
  id          TEXT PRIMARY KEY,
  job_id      TEXT NOT NULL REFERENCES jobs (id),
  database    TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead')),
  attempts    INTEGER NOT NULL DEFAULT 0,
  r2_key      TEXT NOT NULL,
  bytes       INTEGER,
  rows        INTEGER,
  tables      INTEGER,
  sha256      TEXT,
  error       TEXT,
  queued_at   TEXT NOT NULL,
  started_at  TEXT,
  finished_at TEXT,
  updated_at  TEXT NOT NULL,
  UNIQUE (job_id, database)
);
CREATE INDEX runs_by_database ON runs (database, queued_at);

-- Every complete backup object in R2. Deleted objects stay, marked with when and why.
CREATE TABLE backups (
  key           TEXT PRIMARY KEY,
  database      TEXT NOT NULL,
  kind          TEXT NOT NULL CHECK (kind IN ('daily', 'manual')),
  date          TEXT NOT NULL,
  run_id        TEXT REFERENCES runs (id),
  bytes         INTEGER NOT NULL,
  sha256        TEXT NOT NULL,
  tables        INTEGER NOT NULL,
  rows          INTEGER NOT NULL,
  created_at    TEXT NOT NULL,
  deleted_at    TEXT,
  delete_reason TEXT
);
CREATE INDEX backups_by_database ON backups (database, date);

-- Row count of each table inside a backup, as written in the dump's footer.
CREATE TABLE backup_tables (
  key        TEXT NOT NULL REFERENCES backups (key),
  table_name TEXT NOT NULL,
  rows       INTEGER NOT NULL,
  PRIMARY KEY (key, table_name)
);
