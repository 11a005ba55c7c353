-- The `demo` source database: a small shop with a few thousand rows, BLOBs, NULLs, unicode,
-- foreign keys, an AUTOINCREMENT table, an index and a view. Deterministic: every value is
-- computed from the row number, so two seeded copies are identical.

CREATE TABLE customers (
  id         INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  email      TEXT UNIQUE,
  country    TEXT,
  created_at TEXT NOT NULL
);

CREATE TABLE products (
  sku         TEXT PRIMARY KEY,
  title       TEXT NOT NULL,
  price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
  weight_kg   REAL,
  thumbnail   BLOB
) WITHOUT ROWID;

CREATE TABLE orders (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  customer_id INTEGER NOT NULL REFERENCES customers (id),
  placed_at   TEXT NOT NULL,
  note        TEXT
);

CREATE TABLE order_items (
  order_id INTEGER NOT NULL REFERENCES orders (id),
  sku      TEXT NOT NULL REFERENCES products (sku),
  quantity INTEGER NOT NULL,
  PRIMARY KEY (order_id, sku)
);

CREATE TABLE events (
  id      INTEGER PRIMARY KEY,
  kind    TEXT NOT NULL,
  payload TEXT,
  raw     BLOB
);

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO customers (id, name, email, country, created_at)
SELECT i,
       CASE i % 5
         WHEN 0 THEN 'Zoë Ångström ' || i
         WHEN 1 THEN '山田 太郎 ' || i
         WHEN 2 THEN 'Łukasz Żółć ' || i
         WHEN 3 THEN 'O''Brien "Bob" ' || i
         ELSE 'Ana 🚀 ' || i
       END,
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'user' || i || '@example.com' END,
       CASE i % 4 WHEN 0 THEN 'DE' WHEN 1 THEN 'JP' WHEN 2 THEN 'PL' ELSE NULL END,
       strftime('%Y-%m-%dT%H:%M:%SZ', 1700000000 + i * 3600, 'unixepoch')
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
INSERT INTO products (sku, title, price_cents, weight_kg, thumbnail)
SELECT printf('SKU-%04d', i),
       'Product № ' || i || CASE WHEN i % 3 = 0 THEN ' — édition spéciale' ELSE '' END,
       i * 137 % 10000,
       CASE WHEN i % 9 = 0 THEN NULL ELSE i * 0.125 END,
       CASE WHEN i % 4 = 0 THEN NULL
            WHEN i % 4 = 1 THEN X''
            ELSE zeroblob(i % 64) END
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO orders (id, customer_id, placed_at, note)
SELECT i,
       (i * 7919) % 1000 + 1,
       strftime('%Y-%m-%dT%H:%M:%SZ', 1710000000 + i * 600, 'unixepoch'),
       CASE i % 6 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'gift wrap, please' ELSE 'leave at door #' || i END
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
INSERT INTO order_items (order_id, sku, quantity)
SELECT (i + 1) / 2, printf('SKU-%04d', (i * 31) % 200 + 1), i % 5 + 1
FROM n;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
INSERT INTO events (id, kind, payload, raw)
SELECT i * 3 - 2000,
       CASE i % 3 WHEN 0 THEN 'signup' WHEN 1 THEN 'checkout' ELSE 'refund' END,
       CASE WHEN i % 10 = 0 THEN NULL ELSE '{"seq":' || i || ',"ok":' || (i % 2 = 0) || '}' END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE CAST(printf('%08x%08x', i, i * 2654435761 % 4294967296) AS BLOB) END
FROM n;

CREATE INDEX orders_by_customer ON orders (customer_id, placed_at);
CREATE VIEW order_totals AS
  SELECT o.id AS order_id, sum(oi.quantity * p.price_cents) AS total_cents
  FROM orders o JOIN order_items oi ON oi.order_id = o.id JOIN products p ON p.sku = oi.sku
  GROUP BY o.id;
