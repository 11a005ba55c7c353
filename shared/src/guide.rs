//! Restore guides: exact, copy-pasteable steps for restoring one stored backup, built from its
//! inventory entry. Every command names real files, keys and tables, quoted for a POSIX shell.

use crate::dump::sql::comment_safe;
use crate::dump::COMPLETE_MARKER;
use crate::keys::StoredFormat;
use serde::Serialize;

/// A stored backup, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuideBackup {
    pub database: String,
    pub key: String,
    /// `daily` or `manual`.
    pub kind: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub sha256: String,
    /// For an encrypted backup: the SHA-256 of what `age -d` gives back.
    pub plaintext_sha256: Option<String>,
    pub bytes: u64,
    pub rows: u64,
    pub bookmark: Option<String>,
    pub created_at: String,
    /// Table names and row counts, as in the dump's footer.
    pub tables: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GuideStep {
    pub title: String,
    pub description: String,
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreGuide {
    pub database: String,
    pub key: String,
    pub kind: String,
    pub date: String,
    pub sha256: String,
    /// Stored encrypted (age): the first step decrypts it with the secret key.
    pub encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext_sha256: Option<String>,
    pub bytes: u64,
    pub rows: u64,
    pub created_at: String,
    pub bookmark: Option<String>,
    pub tables: Vec<GuideTable>,
    pub steps: Vec<GuideStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuideTable {
    pub name: String,
    pub rows: u64,
    /// Writes this table's rows alone from the dump to `<table>.sql`.
    pub extract: String,
}

/// Quotes `s` as one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Sections of the dump after the last table's rows (see `dump`): they end a table's rows.
const TAIL_SECTIONS: &str = "AUTOINCREMENT counters|Staging table of the rows larger than one statement|\
                             Full-text indexes over other tables|Indexes, views and triggers|Row counts";

/// An `awk` command writing `table`'s rows from `dump_file` to `out_file`: the lines after its
/// `-- Table:` marker up to the next section, with the `PRAGMA` line and the staging table that
/// rows over the statement limit are assembled in.
pub fn extract_table_command(table: &str, dump_file: &str, out_file: &str) -> String {
    let marker = format!("-- Table: {}", comment_safe(table));
    let program = format!(
        "/^-- Table: / {{ p = ($0 == m) }} /^-- ({TAIL_SECTIONS})$/ {{ p = 0 }} \
         p || /^PRAGMA defer_foreign_keys/ || /^(CREATE TABLE IF NOT EXISTS|DROP TABLE IF EXISTS) \"_d1_backup_staging\"/"
    );
    format!(
        "awk -v m={} {} {} > {}",
        shell_quote(&marker.replace('\\', "\\\\")),
        shell_quote(&program),
        shell_quote(dump_file),
        shell_quote(out_file)
    )
}

/// The guide for `backup`, served at `origin` (the API's base URL) from R2 bucket `bucket`.
pub fn restore_guide(backup: &GuideBackup, origin: &str, bucket: &str) -> RestoreGuide {
    let StoredFormat { gzip: gz, encrypted } = StoredFormat::of(&backup.key);
    let file = backup.key.rsplit('/').next().unwrap_or("backup.sql").to_owned();
    let file = format!("{}-{}-{file}", backup.database, backup.date);
    let plain_file = file.trim_end_matches(".age").to_owned();
    let sql_file = plain_file.trim_end_matches(".gz").to_owned();
    let restored = format!("{}-restored", backup.database);
    let q = shell_quote;

    // Nightly backups by date and database; manual ones (and any backup) by key.
    let url = match backup.kind.as_str() {
        "daily" => format!("{origin}/download/{}/{}", backup.date, backup.database),
        _ => format!("{origin}/download?key={}", backup.key),
    };
    let download = vec![
        format!("curl -fsS -H \"Authorization: Bearer $D1_BACKUP_TOKEN\" -o {} {}", q(&file), q(&url)),
        format!("npx wrangler r2 object get {} --remote --file {}", q(&format!("{bucket}/{}", backup.key)), q(&file)),
    ];
    let mut verify = vec![format!("echo {} | sha256sum -c -", q(&format!("{}  {file}", backup.sha256)))];
    if encrypted {
        // age-keygen's key file: the secret key matching one of the database's recipients.
        verify.push(format!("age -d -i key.txt -o {} {}", q(&plain_file), q(&file)));
        if let Some(plain) = &backup.plaintext_sha256 {
            verify.push(format!("echo {} | sha256sum -c -", q(&format!("{plain}  {plain_file}"))));
        }
    }
    if gz {
        verify.push(format!("gunzip -k {}", q(&plain_file)));
    }
    verify.push(format!("tail -n 1 {}   # must start with {COMPLETE_MARKER:?}", q(&sql_file)));

    let mut steps = vec![
        GuideStep {
            title: "Download the backup".into(),
            description: if backup.kind == "daily" {
                "With the API (any token that may read), or straight from R2 with wrangler.".into()
            } else {
                "Straight from R2 with wrangler.".into()
            },
            commands: download,
        },
        GuideStep {
            title: if encrypted { "Check and decrypt it".into() } else { "Check it".into() },
            description: format!(
                "The SHA-256 recorded at export time must match{}{}, and the dump must end with its completion line: a dump without it is incomplete.",
                match (encrypted, gz) {
                    (true, _) => " (of the .age file as downloaded)",
                    (false, true) => " (of the .gz file as downloaded)",
                    (false, false) => "",
                },
                if encrypted {
                    "; it is encrypted with age: decrypt it with the secret key of one of the database's recipients \
                     (Debian's `age` package), and the plaintext must match its own recorded SHA-256"
                } else {
                    ""
                }
            ),
            commands: verify,
        },
        GuideStep {
            title: "Restore into a new D1 database".into(),
            description: "Restore into an empty database, then point your Worker's binding at it (or restore into the original after emptying it). The dump has no BEGIN/COMMIT and defers foreign keys, as D1 requires.".into(),
            commands: vec![
                format!("npx wrangler d1 create {}", q(&restored)),
                format!("npx wrangler d1 execute {} --remote --file {}", q(&restored), q(&sql_file)),
            ],
        },
        GuideStep {
            title: "Restore into a local SQLite file".into(),
            description: "For inspection or a local copy.".into(),
            commands: vec![format!("sqlite3 {} < {}", q(&format!("{restored}.sqlite")), q(&sql_file))],
        },
        GuideStep {
            title: "Restore a single table".into(),
            description: "Each table's rows follow its `-- Table: <name>` line. Extract one table's rows (see `tables` for every table's command) and load them into a database where that table exists and is empty.".into(),
            commands: backup
                .tables
                .first()
                .map(|(name, _)| {
                    vec![
                        extract_table_command(name, &sql_file, &format!("{name}.sql")),
                        format!("npx wrangler d1 execute {} --remote --file {}", q(&backup.database), q(&format!("{name}.sql"))),
                    ]
                })
                .unwrap_or_default(),
        },
    ];
    if let Some(bookmark) = &backup.bookmark {
        steps.push(GuideStep {
            title: "Or rewind the database itself with D1 Time Travel".into(),
            description: format!(
                "The export read the database at this bookmark ({}). Time Travel restores the original database in place to that state (within your plan's Time Travel window) and discards every later write.",
                backup.created_at
            ),
            commands: vec![format!("npx wrangler d1 time-travel restore {} --bookmark={}", q(&backup.database), q(bookmark))],
        });
    }
    RestoreGuide {
        database: backup.database.clone(),
        key: backup.key.clone(),
        kind: backup.kind.clone(),
        date: backup.date.clone(),
        sha256: backup.sha256.clone(),
        encrypted,
        plaintext_sha256: backup.plaintext_sha256.clone(),
        bytes: backup.bytes,
        rows: backup.rows,
        created_at: backup.created_at.clone(),
        bookmark: backup.bookmark.clone(),
        tables: backup
            .tables
            .iter()
            .map(|(name, rows)| GuideTable {
                name: name.clone(),
                rows: *rows,
                extract: extract_table_command(name, &sql_file, &format!("{name}.sql")),
            })
            .collect(),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_survive_the_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let cmd = extract_table_command("we'ird", "d.sql", "out.sql");
        assert!(cmd.starts_with(r"awk -v m='-- Table: we'\''ird' "), "{cmd}");
    }

    #[test]
    fn a_daily_guide_downloads_through_the_api_and_names_the_bookmark() {
        let backup = GuideBackup {
            database: "chinook".into(),
            key: "daily/2026-11-23/chinook.sql.gz".into(),
            kind: "daily".into(),
            date: "2026-11-23".into(),
            sha256: "ab".repeat(32),
            plaintext_sha256: None,
            bytes: 10,
            rows: 5,
            bookmark: Some("0000-bm".into()),
            created_at: "2026-11-23T03:00:01.000Z".into(),
            tables: vec![("Album".into(), 347)],
        };
        let guide = restore_guide(&backup, "https://b.example", "d1-backups");
        let all: Vec<&String> = guide.steps.iter().flat_map(|s| &s.commands).collect();
        assert!(all[0].contains("'https://b.example/download/2026-11-23/chinook'"));
        assert!(all.iter().any(|c| c.starts_with("gunzip -k 'chinook-2026-11-23-chinook.sql.gz'")));
        assert!(all.iter().any(|c| c.contains("--file 'chinook-2026-11-23-chinook.sql'")));
        assert!(all.last().unwrap().contains("--bookmark='0000-bm'"));
        assert_eq!(guide.tables[0].name, "Album");
        assert!(!guide.encrypted && !all.iter().any(|c| c.starts_with("age ")));
        // A manual backup downloads through the API too, by its key.
        let key = "manual/2026-11-23/0b7f3c1e-8a9d-4f5e-9c2b-1d3e5f7a9b0c/chinook.sql.gz";
        let manual = GuideBackup { key: key.into(), kind: "manual".into(), ..backup };
        let guide = restore_guide(&manual, "https://b.example", "d1-backups");
        assert!(guide.steps[0].commands[0].ends_with(&format!("'https://b.example/download?key={key}'")), "{:?}", guide.steps[0]);
        assert!(crate::listing::is_inventory_key(key));
    }

    #[test]
    fn an_encrypted_guide_decrypts_with_age_before_anything_else() {
        let backup = GuideBackup {
            database: "chinook".into(),
            key: "daily/2026-11-23/chinook.sql.gz.age".into(),
            kind: "daily".into(),
            date: "2026-11-23".into(),
            sha256: "ab".repeat(32),
            plaintext_sha256: Some("cd".repeat(32)),
            bytes: 10,
            rows: 5,
            bookmark: None,
            created_at: "2026-11-23T03:00:01.000Z".into(),
            tables: vec![("Album".into(), 347)],
        };
        let guide = restore_guide(&backup, "https://b.example", "d1-backups");
        let check: Vec<&str> = guide.steps[1].commands.iter().map(String::as_str).collect();
        assert_eq!(check[0], format!("echo '{}  chinook-2026-11-23-chinook.sql.gz.age' | sha256sum -c -", "ab".repeat(32)));
        assert_eq!(check[1], "age -d -i key.txt -o 'chinook-2026-11-23-chinook.sql.gz' 'chinook-2026-11-23-chinook.sql.gz.age'");
        assert_eq!(check[2], format!("echo '{}  chinook-2026-11-23-chinook.sql.gz' | sha256sum -c -", "cd".repeat(32)));
        assert_eq!(check[3], "gunzip -k 'chinook-2026-11-23-chinook.sql.gz'");
        assert!(guide.steps[2].commands[1].ends_with("--file 'chinook-2026-11-23-chinook.sql'"));
        assert!(guide.encrypted);
    }
}
