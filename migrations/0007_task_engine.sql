-- One task engine for backup runs, operations (verifications, restores) and archive jobs
-- (see shared/src/task.rs and the state machine in the README).
--
-- lease_token:     the fencing token. Taking a task's lease increments it; every write a
--                  delivery makes is conditional on the token it took, so a delivery whose lease
--                  was taken over writes nothing.
-- failures:        consecutive failed attempts of the current step (runs had none: they counted
--                  the queue's deliveries); only failures spend the retry budget.
-- next_attempt_at: when the task's next message is due; the sweeper re-sends the message of a
--                  task past it (plus a grace period) that no delivery holds.
ALTER TABLE runs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN next_attempt_at TEXT;
ALTER TABLE operations ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN next_attempt_at TEXT;
ALTER TABLE archive_jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE archive_jobs ADD COLUMN next_attempt_at TEXT;

-- Unfinished tasks are due now: the sweeper re-sends them unless a delivery takes them first.
UPDATE runs SET next_attempt_at = updated_at WHERE state NOT IN ('succeeded', 'dead');
UPDATE operations SET next_attempt_at = updated_at WHERE state NOT IN ('succeeded', 'failed', 'dead');
UPDATE archive_jobs SET next_attempt_at = updated_at WHERE state NOT IN ('succeeded', 'dead');

CREATE INDEX runs_due ON runs (next_attempt_at) WHERE state NOT IN ('succeeded', 'dead');
CREATE INDEX operations_due ON operations (next_attempt_at) WHERE state NOT IN ('succeeded', 'failed', 'dead');
CREATE INDEX archive_jobs_due ON archive_jobs (next_attempt_at) WHERE state NOT IN ('succeeded', 'dead');

-- The fence: a fenced batch starts by inserting the count of rows that still hold its token
-- (1, or 0 once the lease was taken over, which the CHECK refuses, failing the whole batch)
-- and ends by deleting it again. The table is empty outside a batch.
CREATE TABLE lease_fence (held INTEGER NOT NULL CHECK (held = 1));

-- A run's attempts may now end dead (the engine counts failures itself) or be abandoned by a
-- delivery that lost its lease; SQLite cannot change a CHECK in place, so the table is rebuilt.
CREATE TABLE run_attempts_new (
  run_id        TEXT NOT NULL REFERENCES runs (id),
  step          INTEGER NOT NULL,
  attempt       INTEGER NOT NULL,
  started_at    TEXT NOT NULL,
  finished_at   TEXT NOT NULL,
  outcome       TEXT NOT NULL CHECK (outcome IN ('continued', 'succeeded', 'retrying', 'dead', 'leased_elsewhere')),
  error         TEXT,
  retry_delay_s INTEGER
);
INSERT INTO run_attempts_new SELECT run_id, step, attempt, started_at, finished_at, outcome, error, retry_delay_s
  FROM run_attempts;
DROP TABLE run_attempts;
ALTER TABLE run_attempts_new RENAME TO run_attempts;
CREATE INDEX run_attempts_by_run ON run_attempts (run_id, started_at);
