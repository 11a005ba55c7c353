-- Encrypted backups (age): the recorded sha256 stays the stored object's (what R2 holds and
-- what /download serves); this is the SHA-256 of its plaintext, what `age -d` gives back.
-- NULL for a backup that is not encrypted.
ALTER TABLE backups ADD COLUMN plaintext_sha256 TEXT;
