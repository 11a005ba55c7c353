-- The queue pipeline: leases, attempt history, idempotent triggers, one nightly job per night,
-- rejected messages and alert events.

-- A run is exported by one delivery at a time: the delivery holding an unexpired lease.
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until TEXT;

-- Every delivery of every step: when, which attempt (as the queue counts it), how it ended,
-- and the backoff delay chosen before the next attempt.
CREATE TABLE run_attempts (
  run_id        TEXT NOT NULL REFERENCES runs (id),
  step          INTEGER NOT NULL,
  attempt       INTEGER NOT NULL,
  started_at    TEXT NOT NULL,
  finished_at   TEXT NOT NULL,
  outcome       TEXT NOT NULL CHECK (outcome IN ('continued', 'succeeded', 'retrying', 'leased_elsewhere')),
  error         TEXT,
  retry_delay_s INTEGER
);
CREATE INDEX run_attempts_by_run ON run_attempts (run_id, started_at);

-- POST /trigger with an Idempotency-Key: the same key within 24 hours returns the same job.
CREATE TABLE idempotency_keys (
  key            TEXT PRIMARY KEY,
  job_id         TEXT NOT NULL REFERENCES jobs (id),
  request_sha256 TEXT NOT NULL,
  created_at     TEXT NOT NULL
);

-- One nightly job per scheduled night, however many times the cron fires for it.
CREATE UNIQUE INDEX jobs_one_daily_per_night ON jobs (requested_at) WHERE kind = 'daily';

-- Queue messages no consumer could read, kept for inspection instead of retried forever.
CREATE TABLE rejected_messages (
  id          INTEGER PRIMARY KEY,
  message_id  TEXT NOT NULL,
  queue       TEXT NOT NULL,
  body        TEXT NOT NULL,
  error       TEXT NOT NULL,
  received_at TEXT NOT NULL
);

-- Events an operator must hear about (a run dead, a message rejected); delivery comes later.
CREATE TABLE alerts (
  id          INTEGER PRIMARY KEY,
  kind        TEXT NOT NULL CHECK (kind IN ('run_dead', 'message_rejected')),
  job_id      TEXT,
  database    TEXT,
  message     TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  sent_at     TEXT
);
