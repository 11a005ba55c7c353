//! `GET /list` query parameters, validated as plain data, and its opaque page cursor.

use crate::config::is_valid_database_name;
use crate::keys::parse_date;
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
    /// Continue after this (date, key): the last item of the previous page.
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

/// The cursor after an item: its date and key, hex-encoded (opaque to clients, safe in URLs).
pub fn encode_cursor(date: &str, key: &str) -> String {
    crate::sha256::hex(format!("{date}\n{key}").as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    if cursor.len() > 2048 {
        return None;
    }
    let text = String::from_utf8(crate::sha256::from_hex(cursor)?).ok()?;
    let (date, key) = text.split_once('\n')?;
    parse_date(date)?;
    Some((date.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn parses_filters_and_round_trips_cursors() {
        let cursor = encode_cursor("2026-11-23", "daily/2026-11-23/a.sql");
        let q = parse_list_query(&pairs(&[("database", "a"), ("kind", "weekly"), ("limit", "5"), ("cursor", &cursor)])).unwrap();
        assert_eq!(q.database.as_deref(), Some("a"));
        assert_eq!(q.kind, Some(StoredKind::Weekly));
        assert_eq!(q.limit, 5);
        assert_eq!(q.after, Some(("2026-11-23".into(), "daily/2026-11-23/a.sql".into())));
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
}
