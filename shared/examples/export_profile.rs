//! Where an export's time goes, measured natively over a SQLite file (the bench database):
//! SQLite producing the pages of literals (`quote()` and the exact-REAL expressions, which D1
//! runs the same way), the exporter's own Rust work (statements, row hashing), and what each
//! stored byte then costs: gzip, SHA-256, age encryption. Inside a Worker the clock stands still
//! while code runs (it advances only with I/O), so this split can only be measured here.
//!
//!     cargo run --release -p shared --example export_profile -- DB_FILE [ROWS_PER_QUERY]
//!
//! Prints one JSON object. Run by `make bench` (bench/run.py), which reports it.

#[path = "../tests/support/mod.rs"]
mod support;

use flate2::write::GzEncoder;
use flate2::Compression;
use futures::executor::block_on;
use rusqlite::{Connection, OpenFlags};
use shared::age::{Identity, Seed, StreamEncryptor};
use shared::dump::{export, DumpOptions};
use shared::ports::{PortError, SqlSource};
use shared::sha256::ResumableSha256;
use std::io::Write;
use std::time::{Duration, Instant};
use support::RusqliteSource;

/// The source, with the time spent in its queries.
struct TimedSource<'a> {
    inner: RusqliteSource<'a>,
    spent: Duration,
    queries: u32,
}

impl SqlSource for TimedSource<'_> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        let started = Instant::now();
        let rows = self.inner.query(sql).await;
        self.spent += started.elapsed();
        self.queries += 1;
        rows
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: export_profile DB_FILE [ROWS_PER_QUERY]");
    let rows_per_query: u32 = args.next().map_or(5000, |n| n.parse().expect("ROWS_PER_QUERY is a number"));
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("the database opens");
    let mut source = TimedSource { inner: RusqliteSource::new(&conn), spent: Duration::ZERO, queries: 0 };
    let mut opts = DumpOptions::new("profile", chrono::Utc::now());
    opts.rows_per_query = rows_per_query;
    let mut dump = Vec::new();
    let started = Instant::now();
    let totals = block_on(export(&mut source, &mut dump, &opts)).expect("the export succeeds");
    let export_time = started.elapsed();

    let timed = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        f();
        started.elapsed().as_secs_f64()
    };
    let mut gzipped = 0;
    let gzip = timed(&mut || {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(6));
        encoder.write_all(&dump).unwrap();
        gzipped = encoder.finish().unwrap().len();
    });
    let sha256 = timed(&mut || {
        let mut hash = ResumableSha256::new();
        hash.update(&dump);
        hash.hex_digest();
    });
    let age = timed(&mut || {
        let recipient = Identity::from_secret([7; 32]).recipient();
        let (mut encryptor, mut out) = StreamEncryptor::start(&[recipient], &Seed::fresh(1).unwrap()).unwrap();
        for piece in dump.chunks(1 << 20) {
            encryptor.push(piece, &mut out).unwrap();
            out.clear();
        }
        encryptor.finish(&mut out).unwrap();
    });
    let report = serde_json::json!({
        "rows": totals.rows,
        "dump_bytes": dump.len(),
        "gzip_bytes": gzipped,
        "queries": source.queries,
        "export_seconds": export_time.as_secs_f64(),
        "sqlite_seconds": source.spent.as_secs_f64(),
        "rust_seconds": (export_time - source.spent).as_secs_f64(),
        "gzip_seconds": gzip,
        "sha256_seconds": sha256,
        "age_seconds": age,
    });
    println!("{report}");
}
