//! Rows too large for one statement.
//!
//! D1 refuses statements over 100,000 bytes, but a row may hold up to 2,000,000 bytes. Such a
//! row's large values are first assembled in a staging table, each by an INSERT of its first
//! piece followed by UPDATEs that append the rest, every statement under the limit; then one
//! INSERT puts the whole row in its table, reading those values from the staging table.
//!
//! Building the values outside the table matters: the table only ever sees whole values, so
//! CHECK constraints (`json_valid(doc)`), UNIQUE keys and numeric column affinity (which would
//! turn a text prefix of digits into a number) act on the value as they did in the source.

/// The staging table's name: created before the first oversized row, dropped at the end.
pub const STAGING_TABLE: &str = "_d1_backup_staging";

/// Creates the staging table (once per dump, before its first use).
pub fn create_staging() -> String {
    format!("CREATE TABLE IF NOT EXISTS \"{STAGING_TABLE}\" (slot INTEGER PRIMARY KEY, v);\n")
}

/// Drops the staging table (at the end of a dump that used it).
pub fn drop_staging() -> String {
    format!("DROP TABLE IF EXISTS \"{STAGING_TABLE}\";\n")
}

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

/// A value assembled in the staging table: its slot and the pieces of its literal.
struct Staged {
    slot: usize,
    /// `'...'`, `X'...'` or `CAST(X'...' AS TEXT)` pieces, in order.
    pieces: Vec<String>,
}

/// Statements restoring one row whose INSERT would exceed `max_bytes`. `insert_prefix` is
/// `INSERT INTO t (cols) VALUES\n`. Values are staged, largest first, until the INSERT fits;
/// `None` when even then it would not (or a piece cannot fit its statement).
pub fn split_row(insert_prefix: &str, values: &[String], max_bytes: usize) -> Option<Vec<String>> {
    let staging = format!("\"{STAGING_TABLE}\"");
    // Room for one piece: the longest statement around it, with a margin for the quoting.
    let overhead = format!("UPDATE {staging} SET v = v || CAST(X'' AS TEXT) WHERE slot = {};\n", values.len()).len() + 16;
    let room = max_bytes.checked_sub(overhead).filter(|r| *r >= 16)?;

    let mut by_size: Vec<usize> = (0..values.len()).filter(|i| classify(&values[*i]).is_some()).collect();
    by_size.sort_by_key(|i| std::cmp::Reverse(values[*i].len()));
    let mut row: Vec<String> = values.to_vec();
    let mut staged = Vec::new();
    let fits = |row: &[String]| insert_prefix.len() + row.iter().map(|v| v.len() + 1).sum::<usize>() + 3 <= max_bytes;
    for slot in by_size {
        if fits(&row) {
            break;
        }
        let (pieces, blob) = match classify(&values[slot])? {
            LongLiteral::Text(inner) => (text_pieces(inner, room).into_iter().map(|p| format!("'{p}'")).collect(), false),
            LongLiteral::Blob(inner) => (hex_pieces(inner, room).into_iter().map(|p| format!("X'{p}'")).collect(), true),
            LongLiteral::HexText(inner) => {
                (hex_pieces(inner, room).into_iter().map(|p| format!("CAST(X'{p}' AS TEXT)")).collect(), false)
            }
        };
        let read = format!("(SELECT v FROM {staging} WHERE slot = {slot})");
        // `||` yields TEXT even from BLOBs: the cast makes the bytes a BLOB again.
        row[slot] = if blob { format!("CAST({read} AS BLOB)") } else { read };
        staged.push(Staged { slot, pieces });
    }
    if !fits(&row) {
        return None;
    }

    let mut statements = Vec::new();
    for value in &staged {
        let mut pieces = value.pieces.iter();
        let first = pieces.next().map_or("''", String::as_str);
        statements.push(format!("INSERT INTO {staging} (slot, v) VALUES ({}, {first});\n", value.slot));
        for piece in pieces {
            statements.push(format!("UPDATE {staging} SET v = v || {piece} WHERE slot = {};\n", value.slot));
        }
    }
    statements.push(format!("{insert_prefix}({});\n", row.join(",")));
    statements.push(format!("DELETE FROM {staging};\n"));
    if statements.iter().any(|s| s.len() > max_bytes) {
        return None;
    }
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
