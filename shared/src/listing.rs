//! `GET /list` query parameters, validated as plain data, and its opaque page cursor; the key
//! of `GET /download?key=`.

use crate::config::is_valid_database_name;
use crate::keys::{parse_date, BackupKey, IsoWeek};
use crate::retention::StoredKind;
use crate::trigger::ApiError;
use chrono::NaiveDate;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub database: Option<String>,
    pub date: Option<NaiveDate>,
    pub kind: Option<StoredKind>,
    pub limit: u32,
    /// Continue after this (creation time, key): the last item of the previous page. The
    /// inventory is listed newest first by creation time, then key.
    pub after: Option<(String, String)>,
    /// Also list deleted objects (with when and why).
    pub include_deleted: bool,
}

/// Parses the query string's pairs; unknown or repeated parameters are refused.
pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let mut query = ListQuery { database: None, date: None, kind: None, limit: DEFAULT_LIMIT, after: None, include_deleted: false };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if seen.contains(&name.as_str()) {
            return Err(ApiError::new(400, "invalid_query", format!("parameter {name:?} is given twice")));
        }
        seen.push(name);
        match name.as_str() {
            "database" => {
                if !is_valid_database_name(value) {
                    return Err(ApiError::new(400, "invalid_database", format!("{value:?} is not a database name")));
                }
                query.database = Some(value.clone());
            }
            "date" => {
                query.date = Some(
                    parse_date(value).ok_or_else(|| ApiError::new(400, "invalid_date", "date must be YYYY-MM-DD"))?,
                )
            }
            "kind" => {
                query.kind = Some(match value.as_str() {
                    "daily" => StoredKind::Daily,
                    "manual" => StoredKind::Manual,
                    "weekly" => StoredKind::Weekly,
                    _ => return Err(ApiError::new(400, "invalid_kind", "kind must be daily, manual or weekly")),
                })
            }
            "limit" => {
                query.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::new(400, "invalid_limit", format!("limit must be 1 to {MAX_LIMIT}")))?
            }
            "cursor" => {
                query.after = Some(
                    decode_cursor(value)
                        .ok_or_else(|| ApiError::new(400, "invalid_cursor", "cursor must be one returned by /list"))?,
                )
            }
            "deleted" => {
                query.include_deleted = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::new(400, "invalid_deleted", "deleted must be true or false")),
                }
            }
            other => {
                return Err(ApiError::new(
                    400,
                    "invalid_query",
                    format!("unknown parameter {other:?}; use database, date, kind, limit, cursor, deleted"),
                ))
            }
        }
    }
    Ok(query)
}

/// The cursor after an item: its creation time and key, hex-encoded (opaque to clients, safe
/// in URLs).
pub fn encode_cursor(created_at: &str, key: &str) -> String {
    crate::sha256::hex(format!("{created_at}\n{key}").as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    if cursor.len() > 2048 {
        return None;
    }
    let text = String::from_utf8(crate::sha256::from_hex(cursor)?).ok()?;
    let (created_at, key) = text.split_once('\n')?;
    // Compared as text with the stored times: only the form the metadata writes is taken.
    let parsed = crate::task::parse_timestamp(created_at)?;
    if crate::task::timestamp(parsed) != created_at {
        return None;
    }
    Some((created_at.to_owned(), key.to_owned()))
}

/// Whether `key` is the name of an object the inventory can hold: a backup
/// (`daily/…`, `manual/…`, as [`BackupKey::to_key`] writes it) or a weekly archive
/// (`weekly/YYYY-Www.tar.gz`). Anything else is never looked up.
pub fn is_inventory_key(key: &str) -> bool {
    if let Some(week) = key.strip_prefix("weekly/").and_then(|k| k.strip_suffix(".tar.gz")) {
        return IsoWeek::parse(week).is_some_and(|w| w.archive_key() == key);
    }
    BackupKey::parse(key).is_some_and(|k| k.to_key() == key)
}

/// `GET /download?key=<key>`: the one parameter, a key the inventory can hold.
pub fn parse_download_query(pairs: &[(String, String)]) -> Result<String, ApiError> {
    match pairs {
        [(name, key)] if name == "key" => {
            if is_inventory_key(key) {
                Ok(key.clone())
            } else {
                Err(ApiError::new(
                    400,
                    "invalid_key",
                    "key must be a backup's or weekly archive's key as GET /list shows it \
                     (daily/YYYY-MM-DD/<db>.sql, manual/YYYY-MM-DD/<job>/<db>.sql, weekly/YYYY-Www.tar.gz, \
                     with .gz and .age where they apply)",
                ))
            }
        }
        [] => Err(ApiError::new(400, "invalid_query", "the key parameter is required: /download?key=<key from /list>")),
        _ => Err(ApiError::new(400, "invalid_query", "use one parameter, key (a key from /list)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn parses_filters_and_round_trips_cursors() {
        let cursor = encode_cursor("2026-11-23T03:00:01.250Z", "daily/2026-11-23/a.sql");
        let q = parse_list_query(&pairs(&[("database", "a"), ("kind", "weekly"), ("limit", "5"), ("cursor", &cursor)])).unwrap();
        assert_eq!(q.database.as_deref(), Some("a"));
        assert_eq!(q.kind, Some(StoredKind::Weekly));
        assert_eq!(q.limit, 5);
        assert_eq!(q.after, Some(("2026-11-23T03:00:01.250Z".into(), "daily/2026-11-23/a.sql".into())));
        // A cursor of the date-ordered listing (before creation-time order) is refused, not misread.
        let old = encode_cursor("2026-11-23", "daily/2026-11-23/a.sql");
        assert_eq!(parse_list_query(&pairs(&[("cursor", &old)])).unwrap_err().code, "invalid_cursor");
        assert_eq!(parse_list_query(&[]).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn refuses_bad_parameters() {
        for (q, code) in [
            (vec![("database", "../x")], "invalid_database"),
            (vec![("date", "2026-1-1")], "invalid_date"),
            (vec![("kind", "hourly")], "invalid_kind"),
            (vec![("limit", "0")], "invalid_limit"),
            (vec![("limit", "1001")], "invalid_limit"),
            (vec![("limit", "x")], "invalid_limit"),
            (vec![("cursor", "zz")], "invalid_cursor"),
            (vec![("cursor", "616263")], "invalid_cursor"),
            (vec![("deleted", "yes")], "invalid_deleted"),
            (vec![("sort", "x")], "invalid_query"),
            (vec![("limit", "1"), ("limit", "2")], "invalid_query"),
        ] {
            assert_eq!(parse_list_query(&pairs(&q)).unwrap_err().code, code, "{q:?}");
        }
    }

    #[test]
    fn download_takes_only_keys_the_inventory_can_hold() {
        for key in [
            "daily/2026-11-23/chinook.sql",
            "daily/2026-11-23/demo.sql.gz",
            "manual/2026-11-23/0b7f3c1e-8a9d-4f5e-9c2b-1d3e5f7a9b0c/bulk.sql.gz.age",
            "weekly/2026-W47.tar.gz",
        ] {
            assert_eq!(parse_download_query(&pairs(&[("key", key)])), Ok(key.to_string()), "{key}");
        }
        for key in [
            "",
            "daily/2026-11-23/../chinook.sql",
            "daily/2026-11-23/chinook.txt",
            "daily/2026-13-01/chinook.sql",
            "manual/2026-11-23/not-a-uuid/bulk.sql",
            "manual/2026-11-23/0B7F3C1E-8A9D-4F5E-9C2B-1D3E5F7A9B0C/bulk.sql",
            "weekly/2026-W60.tar.gz",
            "weekly/2026-W47.tar",
            "staging/abc",
            "restore-staging/x/y.sql",
            "/daily/2026-11-23/chinook.sql",
        ] {
            assert_eq!(parse_download_query(&pairs(&[("key", key)])).unwrap_err().code, "invalid_key", "{key:?}");
        }
        assert_eq!(parse_download_query(&[]).unwrap_err().code, "invalid_query");
        assert_eq!(parse_download_query(&pairs(&[("name", "x")])).unwrap_err().code, "invalid_query");
        let twice = pairs(&[("key", "daily/2026-11-23/a.sql"), ("key", "daily/2026-11-23/a.sql")]);
        assert_eq!(parse_download_query(&twice).unwrap_err().code, "invalid_query");
    }
}
