-- Alerts delivered by webhook, and the facts the checks at every cron compare.

-- The schema objects of each backup (JSON [{type, name, sql}]), to name what changed.
ALTER TABLE backups ADD COLUMN schema TEXT;

-- What an alert is about (a backup key, a job id, a database and day): a check repeated at
-- every cron raises its alert once.
ALTER TABLE alerts ADD COLUMN subject TEXT;
-- Delivery: tries so far and the last failure (never the webhook's URL, which is a secret).
ALTER TABLE alerts ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN last_error TEXT;
-- The invocation delivering an alert holds it until then, so two never send it both.
ALTER TABLE alerts ADD COLUMN claimed_until TEXT;
CREATE UNIQUE INDEX alerts_once_per_subject ON alerts (kind, subject) WHERE subject IS NOT NULL;
CREATE INDEX alerts_unsent ON alerts (sent_at, id);
