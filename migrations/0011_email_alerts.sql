-- Email alerts and the digest (ALERT_EMAIL): alerts are delivered by email beside the webhooks,
-- through the same table, claims, attempts and last_error. The daily or weekly digest is an
-- alert of its own kind whose subject names its period ('daily 2026-11-22', 'weekly 2026-W47'):
-- the unique (kind, subject) index records it once per period, so a cron that fires twice
-- sends one. The table is rebuilt to allow the kind (SQLite cannot change a CHECK in place).
CREATE TABLE alerts_new (
  id            INTEGER PRIMARY KEY,
  kind          TEXT NOT NULL CHECK (kind IN (
                  'run_dead', 'message_rejected', 'job_failed', 'job_succeeded', 'backup_stale',
                  'backup_shrank', 'schema_changed', 'verify_failed', 'archive_member_bad',
                  'archive_dead', 'replica_dead', 'digest')),
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
