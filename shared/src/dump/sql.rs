//! Small SQL text helpers shared by the exporter.

/// `name` as a double-quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a single-quoted SQL string literal.
pub fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A SQL expression, evaluated by SQLite itself, that turns `column` (an identifier or key
/// expression) into an exact SQL literal for every storage class.
///
/// `quote()` alone is exact for INTEGER, BLOB and NULL and for finite REALs, but not for:
/// - ±infinity, which some SQLite versions quote as `Inf` (not importable): written `9e999`;
/// - -0.0, which `quote()` writes as `0.0` (the sign only shows through `atan2`): written
///   `-0.0`, which SQLite reads back as negative zero;
/// - TEXT with NUL (`quote()` stops at the NUL) or other control characters (the sqlite3 shell
///   drops a CR before LF inside literals): written as `CAST(X'<utf-8 hex>' AS TEXT)`, an
///   expression that restores the same bytes through every client.
pub fn literal_expr(column: &str) -> String {
    format!(
        "CASE typeof({c}) \
           WHEN 'real' THEN CASE \
             WHEN {c} = 9e999 THEN '9e999' \
             WHEN {c} = -9e999 THEN '-9e999' \
             WHEN {c} = 0 AND atan2({c}, -1) < 0 THEN '-0.0' \
             ELSE quote({c}) END \
           WHEN 'text' THEN CASE \
             WHEN instr(CAST({c} AS BLOB), X'00') > 0 \
               OR {c} GLOB ('*[' || char(1) || '-' || char(31) || char(127) || ']*') \
             THEN 'CAST(X''' || hex({c}) || ''' AS TEXT)' \
             ELSE quote({c}) END \
           ELSE quote({c}) END",
        c = column
    )
}

/// A name made safe to stand inside a `--` comment line: control characters (a newline would
/// end the comment and turn the rest into SQL) are written as `\xNN`.
pub fn comment_safe(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(string_literal("it's"), "'it''s'");
        assert_eq!(comment_safe("a\nb"), "a\\x0Ab");
    }
}
