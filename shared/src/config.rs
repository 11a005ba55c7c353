//! Which databases are backed up: configuration, not code.
//!
//! Workers read the `DATABASES` var, an object from database name to D1 binding name, such as
//! `{"chinook": "DB_CHINOOK", "demo": "DB_DEMO"}` (in wrangler.toml, a `[vars.DATABASES]`
//! table). The producer uses the names to validate requests and fan out; the consumer uses the
//! binding to reach each database. Databases are ordered by name.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// Name used in R2 keys, the API and the metadata database.
    pub name: String,
    /// The D1 binding through which the consumer reads this database.
    pub binding: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A database name is used verbatim inside R2 keys and URLs, so it is restricted to a
/// conservative alphabet: lowercase ASCII letters, digits, `-` and `_`, 1 to 64 characters,
/// starting with a letter or digit.
pub fn is_valid_database_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

fn is_valid_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Turns the `DATABASES` object (name → binding) into validated configs, ordered by name.
pub fn databases_from_map(map: BTreeMap<String, String>) -> Result<Vec<DatabaseConfig>, ConfigError> {
    let databases: Vec<DatabaseConfig> =
        map.into_iter().map(|(name, binding)| DatabaseConfig { name, binding }).collect();
    validate_databases(&databases)?;
    Ok(databases)
}

/// Parses the `DATABASES` var from its JSON text.
pub fn parse_databases(json: &str) -> Result<Vec<DatabaseConfig>, ConfigError> {
    let map: BTreeMap<String, String> = serde_json::from_str(json).map_err(|e| {
        ConfigError(format!("DATABASES must be an object of database name to D1 binding name: {e}"))
    })?;
    databases_from_map(map)
}

pub fn validate_databases(databases: &[DatabaseConfig]) -> Result<(), ConfigError> {
    if databases.is_empty() {
        return Err(ConfigError("DATABASES lists no database".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for db in databases {
        if !is_valid_database_name(&db.name) {
            return Err(ConfigError(format!(
                "database name {:?} must be 1-64 characters of a-z, 0-9, '-' or '_'",
                db.name
            )));
        }
        if !is_valid_binding_name(&db.binding) {
            return Err(ConfigError(format!(
                "binding {:?} of database {:?} is not a valid binding name",
                db.binding, db.name
            )));
        }
        if !seen.insert(db.name.as_str()) {
            return Err(ConfigError(format!("database {:?} is listed twice", db.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_list() {
        let dbs = parse_databases(r#"{"demo":"DB_DEMO","chinook":"DB_CHINOOK"}"#).unwrap();
        assert_eq!(dbs.len(), 2);
        assert_eq!(dbs[0].name, "chinook");
        assert_eq!(dbs[1].binding, "DB_DEMO");
    }

    #[test]
    fn rejects_bad_names_bindings_and_empty_maps() {
        for bad in [
            r#"{}"#,
            r#"{"../x":"A"}"#,
            r#"{"Upper":"A"}"#,
            r#"{"":"A"}"#,
            r#"{"a":"1A"}"#,
            r#"{"a":5}"#,
            r#"[{"name":"a","binding":"A"}]"#,
        ] {
            assert!(parse_databases(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn database_names_are_key_safe() {
        assert!(is_valid_database_name("my-db_2"));
        assert!(!is_valid_database_name("-x"));
        assert!(!is_valid_database_name("a/b"));
        assert!(!is_valid_database_name(&"a".repeat(65)));
    }
}
