//! Cutting a dump into statements, and telling what a statement creates.
//!
//! A dump's row statements hold no raw newline inside a literal (the exporter writes control
//! characters in hex), but its schema statements are SQLite's own text and may hold `;` inside
//! strings, comments and trigger bodies. Statements are therefore cut where SQLite itself would
//! consider one complete: the state machine of `sqlite3_complete()`, which knows that a
//! `CREATE TRIGGER` only ends at `END;`.

/// What [`next_item`] found at the start of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A `--` comment line, without its `--` and newline.
    Comment(&'a str),
    /// One complete statement, with its `;` (and without what follows).
    Statement(&'a str),
    /// Blank space.
    Space,
}

/// The item at the start of `text` and its length (through the newline ending it), or `None`
/// when `text` does not hold a whole item yet. `at_end`: no more text will come, so a last
/// comment line without its newline is whole.
pub fn next_item(text: &str, at_end: bool) -> Option<(Item<'_>, usize)> {
    let bytes = text.as_bytes();
    let first = *bytes.first()?;
    if first.is_ascii_whitespace() {
        let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
        return Some((Item::Space, n));
    }
    if text.starts_with("--") {
        return match text.find('\n') {
            Some(end) => Some((Item::Comment(&text[2..end]), end + 1)),
            None if at_end => Some((Item::Comment(&text[2..]), text.len())),
            None => None,
        };
    }
    let end = statement_end(text)?;
    let mut taken = end;
    if bytes.get(taken) == Some(&b'\n') {
        taken += 1;
    }
    Some((Item::Statement(&text[..end]), taken))
}

// Tokens and states of sqlite3_complete().
const SEMI: usize = 0;
const WS: usize = 1;
const OTHER: usize = 2;
const EXPLAIN: usize = 3;
const CREATE: usize = 4;
const TEMP: usize = 5;
const TRIGGER: usize = 6;
const END: usize = 7;

const TRANSITIONS: [[u8; 8]; 8] = [
    // SEMI WS OTHER EXPLAIN CREATE TEMP TRIGGER END
    [1, 0, 2, 3, 4, 2, 2, 2], // 0 invalid
    [1, 1, 2, 3, 4, 2, 2, 2], // 1 start
    [1, 2, 2, 2, 2, 2, 2, 2], // 2 normal
    [1, 3, 3, 2, 4, 2, 2, 2], // 3 explain
    [1, 4, 2, 2, 2, 4, 5, 2], // 4 create
    [6, 5, 5, 5, 5, 5, 5, 5], // 5 trigger
    [6, 6, 5, 5, 5, 5, 5, 7], // 6 semi
    [1, 7, 5, 5, 5, 5, 5, 5], // 7 end
];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Where the first complete statement of `text` ends (just after its `;`), if it does.
fn statement_end(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut state = 0usize;
    let mut i = 0;
    while i < b.len() {
        let token = match b[i] {
            b';' => {
                i += 1;
                SEMI
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                WS
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let close = text[i + 2..].find("*/")?;
                i += 2 + close + 2;
                WS
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let newline = text[i..].find('\n')?;
                i += newline + 1;
                WS
            }
            b'[' => {
                i += text[i..].find(']')? + 1;
                OTHER
            }
            q @ (b'\'' | b'"' | b'`') => {
                // A doubled quote inside is part of the token: it just closes and reopens.
                i += 1 + b[i + 1..].iter().position(|c| *c == q)? + 1;
                OTHER
            }
            c if is_word_byte(c) => {
                let start = i;
                while i < b.len() && is_word_byte(b[i]) {
                    i += 1;
                }
                if i == b.len() {
                    return None; // the word may go on in text not read yet
                }
                match text[start..i].to_ascii_lowercase().as_str() {
                    "create" => CREATE,
                    "temp" | "temporary" => TEMP,
                    "trigger" => TRIGGER,
                    "end" => END,
                    "explain" => EXPLAIN,
                    _ => OTHER,
                }
            }
            _ => {
                i += 1;
                OTHER
            }
        };
        state = TRANSITIONS[state][token] as usize;
        if state == 1 && token == SEMI {
            return Some(i);
        }
    }
    None
}

/// A word or a name, as the tokenizer of [`subject`] sees it.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// A bare word, lowercased when compared as a keyword.
    Word(String),
    /// A quoted name, unquoted.
    Quoted(String),
    Dot,
    Other,
}

fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < 64 {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i += sql[i..].find('\n').map_or(b.len() - i, |n| n + 1),
            b'/' if b.get(i + 1) == Some(&b'*') => i += sql[i..].find("*/").map_or(b.len() - i, |n| n + 2),
            b'.' => {
                out.push(Token::Dot);
                i += 1;
            }
            b'[' => {
                let close = sql[i..].find(']').unwrap_or(b.len() - i);
                out.push(Token::Quoted(sql[i + 1..i + close].to_owned()));
                i += close + 1;
            }
            q @ (b'"' | b'`' | b'\'') => {
                let mut name = String::new();
                let mut j = i + 1;
                loop {
                    match sql[j..].find(q as char) {
                        Some(n) if b.get(j + n + 1) == Some(&q) => {
                            name.push_str(&sql[j..j + n + 1]);
                            j += n + 2;
                        }
                        Some(n) => {
                            name.push_str(&sql[j..j + n]);
                            j += n + 1;
                            break;
                        }
                        None => {
                            j = b.len();
                            break;
                        }
                    }
                }
                out.push(Token::Quoted(name));
                i = j;
            }
            c if is_word_byte(c) => {
                let start = i;
                while i < b.len() && is_word_byte(b[i]) {
                    i += 1;
                }
                out.push(Token::Word(sql[start..i].to_owned()));
            }
            _ => {
                out.push(Token::Other);
                i += 1;
            }
        }
    }
    out
}

/// What a schema statement is about: the table it creates, or the table an index or trigger is
/// on (`None` for views, other statements, and text it cannot read).
pub fn subject(sql: &str) -> Option<String> {
    let tokens = tokens(sql);
    let keyword = |t: &Token, k: &str| matches!(t, Token::Word(w) if w.eq_ignore_ascii_case(k));
    let name_at = |i: usize| -> Option<String> {
        // `schema.name` or `name`; a name is a bare word or a quoted one.
        let read = |t: &Token| match t {
            Token::Word(w) | Token::Quoted(w) => Some(w.clone()),
            _ => None,
        };
        let first = read(tokens.get(i)?)?;
        match (tokens.get(i + 1), tokens.get(i + 2)) {
            (Some(Token::Dot), Some(t)) => read(t),
            _ => Some(first),
        }
    };
    if !keyword(tokens.first()?, "create") {
        return None;
    }
    let mut i = 1;
    while tokens.get(i).is_some_and(|t| ["temp", "temporary", "unique", "virtual"].iter().any(|k| keyword(t, k))) {
        i += 1;
    }
    let kind = tokens.get(i)?;
    let skip_if_not_exists = |i: usize| {
        if tokens.get(i).is_some_and(|t| keyword(t, "if")) {
            i + 3
        } else {
            i
        }
    };
    if keyword(kind, "table") {
        return name_at(skip_if_not_exists(i + 1));
    }
    if keyword(kind, "index") || keyword(kind, "trigger") {
        // The table follows the first ON after the object's own name.
        let on = (skip_if_not_exists(i + 1) + 1..tokens.len()).find(|&j| keyword(&tokens[j], "on"))?;
        return name_at(on + 1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some((item, n)) = next_item(rest, true) {
            if let Item::Statement(s) = item {
                out.push(s.to_owned());
            }
            rest = &rest[n..];
        }
        assert!(rest.trim().is_empty(), "left over: {rest:?}");
        out
    }

    #[test]
    fn cuts_where_sqlite_would() {
        let text = "-- c\nCREATE TABLE \"a;b\" (x DEFAULT 'semi;colon', y /* ; */);\n\
            INSERT INTO t VALUES\n('x;'),\n(1);\n\
            CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\n  SELECT 'end;';\nEND;\n\
            CREATE TEMP TRIGGER t2 BEFORE DELETE ON [we;rd] BEGIN SELECT 1; END;\n\
            -- Dump complete: 1 tables\n";
        assert_eq!(
            statements(text),
            [
                "CREATE TABLE \"a;b\" (x DEFAULT 'semi;colon', y /* ; */);",
                "INSERT INTO t VALUES\n('x;'),\n(1);",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\n  SELECT 'end;';\nEND;",
                "CREATE TEMP TRIGGER t2 BEFORE DELETE ON [we;rd] BEGIN SELECT 1; END;",
            ]
        );
    }

    #[test]
    fn waits_for_more_text_when_an_item_is_cut() {
        assert_eq!(next_item("INSERT INTO t VALUES ('a;", false), None);
        assert_eq!(next_item("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1;", false), None);
        assert_eq!(next_item("-- no newline yet", false), None);
        assert_eq!(next_item("-- last line", true), Some((Item::Comment(" last line"), 12)));
        assert_eq!(next_item("SELECT 1;", false), Some((Item::Statement("SELECT 1;"), 9)));
    }

    #[test]
    fn names_what_a_statement_is_about() {
        assert_eq!(subject("CREATE TABLE \"we\"\"ird\" (x)").as_deref(), Some("we\"ird"));
        assert_eq!(subject("create table if not exists main.[t 1](x)").as_deref(), Some("t 1"));
        assert_eq!(subject("CREATE VIRTUAL TABLE docs USING fts5(body)").as_deref(), Some("docs"));
        assert_eq!(subject("CREATE UNIQUE INDEX \"i\" ON `Track` (x)").as_deref(), Some("Track"));
        assert_eq!(subject("CREATE INDEX IF NOT EXISTS on_x ON t(x)").as_deref(), Some("t"));
        assert_eq!(subject("CREATE TRIGGER on_t AFTER UPDATE OF a ON \"T\" BEGIN SELECT 1; END").as_deref(), Some("T"));
        assert_eq!(subject("CREATE VIEW v AS SELECT 1"), None);
        assert_eq!(subject("INSERT INTO t VALUES (1)"), None);
    }
}
