-- The `bulk` source database: about 7 MB of dump, more than one 5 MiB R2 part, so its backups
-- go through a multipart upload. Deterministic: every value is computed from the row number.
CREATE TABLE chunks (
  id      INTEGER PRIMARY KEY,
  label   TEXT NOT NULL,
  body    TEXT NOT NULL,
  payload BLOB NOT NULL
);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200)
INSERT INTO chunks (id, label, body, payload)
SELECT i,
       'chunk ' || i,
       replace(hex(zeroblob(1500)), '00', char(65 + i % 26, 97 + i % 23)),
       CAST(replace(hex(zeroblob(750)), '00', printf('%02X', i % 251)) AS BLOB)
FROM n;
