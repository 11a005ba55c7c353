-- A backup's AUTOINCREMENT counters (sqlite_sequence) as exported, JSON beside its schema:
-- verification compares the restored copy's counters, indexes, views and triggers with them.
ALTER TABLE backups ADD COLUMN sequences TEXT;
