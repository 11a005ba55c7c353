-- Exports that continue over several queue messages (steps).
-- step:       steps finished so far; a message for an older step is a stale duplicate.
-- checkpoint: JSON the next step resumes from (cursor, upload id, parts, hash state); cleared
--             when the run ends.
-- bookmark:   the D1 bookmark the export read at, for pairing the dump with Time Travel.
ALTER TABLE runs ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN checkpoint TEXT;
ALTER TABLE runs ADD COLUMN bookmark TEXT;
ALTER TABLE backups ADD COLUMN bookmark TEXT;
