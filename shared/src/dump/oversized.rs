//! Rows too large for one statement.
//!
//! D1 refuses statements over 100,000 bytes, but a row may hold up to 2,000,000 bytes. Such a
//! row is restored by an INSERT in which every large value is an empty placeholder of its kind,
//! followed by UPDATEs that append the value piece by piece, each statement under the limit.

/// Values whose literal is at most this long stay in the INSERT.
const INLINE_LIMIT: usize = 1024;

/// The three forms a long literal takes (see `sql::literal_expr`); numbers are never long.
enum LongLiteral<'a> {
    /// `'...'`: TEXT, inner text with `''` escapes.
    Text(&'a str),
    /// `X'...'`: BLOB, inner hex.
    Blob(&'a str),
    /// `CAST(X'...' AS TEXT)`: TEXT with NUL or control characters, inner hex.
    HexText(&'a str),
}

fn classify(literal: &str) -> Option<LongLiteral<'_>> {
    if let Some(inner) = literal.strip_prefix("CAST(X'").and_then(|s| s.strip_suffix("' AS TEXT)")) {
        Some(LongLiteral::HexText(inner))
    } else if let Some(inner) = literal.strip_prefix("X'").and_then(|s| s.strip_suffix('\'')) {
        Some(LongLiteral::Blob(inner))
    } else {
        literal.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).map(LongLiteral::Text)
    }
}

/// Splits the inner text of a `'...'` literal into pieces of at most `max` bytes, never
/// inside a character or between the two quotes of a `''` escape.
fn text_pieces(inner: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while inner.len() - start > max {
        let mut cut = start + max;
        while !inner.is_char_boundary(cut) {
            cut -= 1;
        }
        // Quotes come in pairs inside the literal: cut after an even run of them.
        let run = inner[start..cut].bytes().rev().take_while(|b| *b == b'\'').count();
        if run % 2 == 1 {
            cut -= 1;
        }
        pieces.push(&inner[start..cut]);
        start = cut;
    }
    pieces.push(&inner[start..]);
    pieces
}

fn hex_pieces(inner: &str, max: usize) -> Vec<&str> {
    let max = max & !1; // whole bytes only
    inner.as_bytes().chunks(max).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect()
}

/// Statements restoring one oversized row. `insert_prefix` is `INSERT INTO t (cols) VALUES\n`,
/// `columns` the identifiers it lists, `row_filter` a WHERE condition that finds the row just
/// inserted. Returns `None` when even the placeholder INSERT would not fit.
pub fn split_row(
    insert_prefix: &str,
    table: &str,
    columns: &[String],
    row_filter: &str,
    values: &[String],
    max_bytes: usize,
) -> Option<Vec<String>> {
    let mut inline = Vec::with_capacity(values.len());
    let mut appends = Vec::new();
    for (column, value) in columns.iter().zip(values) {
        match classify(value).filter(|_| value.len() > INLINE_LIMIT) {
            None => inline.push(value.as_str()),
            Some(long) => {
                let (placeholder, pieces): (&str, Vec<String>) = {
                    // Room for one piece: the statement around it, with a margin for the quoting.
                    let overhead = format!("UPDATE {table} SET {column} = CAST({column} || X'' AS BLOB) WHERE {row_filter};\n").len() + 32;
                    let room = max_bytes.checked_sub(overhead).filter(|r| *r >= 16)?;
                    match long {
                        LongLiteral::Text(inner) => (
                            "''",
                            text_pieces(inner, room).into_iter().map(|p| format!("{column} || '{p}'")).collect(),
                        ),
                        LongLiteral::Blob(inner) => (
                            "X''",
                            // `||` yields TEXT; the cast makes the bytes a BLOB again.
                            hex_pieces(inner, room).into_iter().map(|p| format!("CAST({column} || X'{p}' AS BLOB)")).collect(),
                        ),
                        LongLiteral::HexText(inner) => (
                            "''",
                            hex_pieces(inner, room)
                                .into_iter()
                                .map(|p| format!("{column} || CAST(X'{p}' AS TEXT)"))
                                .collect(),
                        ),
                    }
                };
                inline.push(placeholder);
                appends.extend(
                    pieces.into_iter().map(|expr| format!("UPDATE {table} SET {column} = {expr} WHERE {row_filter};\n")),
                );
            }
        }
    }
    let insert = format!("{insert_prefix}({});\n", inline.join(","));
    if insert.len() > max_bytes || appends.iter().any(|s| s.len() > max_bytes) {
        return None;
    }
    let mut statements = vec![insert];
    statements.extend(appends);
    Some(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pieces_never_split_an_escaped_quote_or_a_character() {
        let inner = "ab''cd''''é''x";
        for max in 1..inner.len() + 1 {
            let pieces = text_pieces(inner, max.max(4));
            assert_eq!(pieces.concat(), inner);
            for p in &pieces {
                let run = p.bytes().rev().take_while(|b| *b == b'\'').count();
                assert_eq!(run % 2, 0, "{p:?} ends inside an escape (max {max})");
            }
        }
    }

    #[test]
    fn hex_pieces_hold_whole_bytes() {
        let pieces = hex_pieces("00112233445566", 5);
        assert_eq!(pieces, ["0011", "2233", "4455", "66"]);
    }
}
