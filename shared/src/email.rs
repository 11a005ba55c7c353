//! Alerts by email, through Cloudflare Email Routing's `send_email` binding: the `ALERT_EMAIL`
//! configuration, address checks, the messages (plain text and HTML) and their MIME form. Pure
//! functions; the Workers hand the raw message to the binding (see `platform::alerts`).
//!
//! The binding takes a complete RFC 5322 message and one envelope recipient, so the message is
//! built here: multipart/alternative with both bodies base64-encoded (UTF-8 text never meets a
//! 7-bit relay raw), an RFC 2047 subject when it is not plain ASCII, CRLF line ends, `Date` and
//! `Message-ID` headers.

use crate::alerts::{title, Alert, AlertKind};
use crate::config::ConfigError;
use crate::digest::DigestSchedule;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The name of the `send_email` binding every Worker needs when `ALERT_EMAIL` is set.
pub const SEND_EMAIL_BINDING: &str = "SEND_EMAIL";
/// The name shown beside the sender's address.
pub const SENDER_NAME: &str = "d1-backup";

/// `ALERT_EMAIL`: who sends, who receives, and whether a digest goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailConfig {
    /// The sender: an address on a domain with Email Routing enabled.
    pub from: String,
    /// Verified destination addresses of the account (each gets its own copy).
    pub to: Vec<String>,
    /// The summary sent from the nightly cron, if asked for.
    pub digest: Option<DigestSchedule>,
    /// The dashboard's URL (`https://…/dashboard`): alerts link to the job on it.
    pub dashboard: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailVar {
    from: String,
    to: Recipients,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    dashboard: Option<String>,
}

impl EmailConfig {
    /// Reads the `ALERT_EMAIL` var (JSON); `None` when unset or empty.
    pub fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Result<Option<EmailConfig>, ConfigError> {
        let Some(text) = get("ALERT_EMAIL").filter(|t| !t.trim().is_empty()) else { return Ok(None) };
        let bad = |m: String| ConfigError(format!("ALERT_EMAIL: {m}"));
        let var: EmailVar = serde_json::from_str(&text).map_err(|e| {
            bad(format!("must be an object {{\"from\": address, \"to\": [addresses], \"digest\", \"dashboard\"}}: {e}"))
        })?;
        let from = var.from.trim().to_owned();
        check_address(&from).map_err(|e| bad(format!("from {:?} is not an email address: {e}", var.from)))?;
        let to: Vec<String> = match var.to {
            Recipients::One(one) => vec![one],
            Recipients::Many(many) => many,
        }
        .into_iter()
        .map(|a| a.trim().to_owned())
        .collect();
        if to.is_empty() {
            return Err(bad("to lists no recipient".into()));
        }
        for (i, address) in to.iter().enumerate() {
            check_address(address).map_err(|e| bad(format!("to entry {} {address:?} is not an email address: {e}", i + 1)))?;
        }
        let digest = match var.digest.as_deref().map(str::trim) {
            None | Some("off") => None,
            Some("daily") => Some(DigestSchedule::Daily),
            Some("weekly") => Some(DigestSchedule::Weekly),
            Some(other) => return Err(bad(format!("digest must be \"daily\", \"weekly\" or \"off\", not {other:?}"))),
        };
        let dashboard = match var.dashboard.map(|d| d.trim().to_owned()) {
            None => None,
            Some(url) => {
                let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) || url.contains(|c: char| c.is_whitespace() || c == '#') {
                    return Err(bad(format!("dashboard {url:?} must be the dashboard's http(s) URL, without a #fragment")));
                }
                Some(url)
            }
        };
        Ok(Some(EmailConfig { from, to, digest, dashboard }))
    }

    /// The binding check: email configured without its `send_email` binding is a configuration
    /// error like a malformed address, named before anything is sent.
    pub fn check_binding(&self, has_binding: bool) -> Result<(), ConfigError> {
        if has_binding {
            Ok(())
        } else {
            Err(ConfigError(format!(
                "ALERT_EMAIL is set but this Worker has no send_email binding named {SEND_EMAIL_BINDING} \
                 (add [[send_email]] name = \"{SEND_EMAIL_BINDING}\" to its wrangler.toml)"
            )))
        }
    }

    /// The link to a job on the dashboard (its card's anchor), or to the dashboard itself.
    pub fn dashboard_link(&self, job_id: Option<&str>) -> Option<String> {
        let base = self.dashboard.as_deref()?;
        Some(match job_id {
            Some(job) => format!("{base}#job-{job}"),
            None => base.to_owned(),
        })
    }
}

/// Checks a bare address (`local@domain`, no display name): what Email Routing accepts for a
/// sender or a verified destination. ASCII only (internationalized addresses need SMTPUTF8,
/// which the binding does not promise), a dot-atom local part of at most 64 characters, and a
/// domain of at least two DNS labels.
pub fn check_address(address: &str) -> Result<(), String> {
    if address.len() > 254 {
        return Err("longer than 254 characters".into());
    }
    let (local, domain) = address.rsplit_once('@').ok_or("no @")?;
    if local.is_empty() || local.len() > 64 {
        return Err("the part before @ must be 1 to 64 characters".into());
    }
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    let atom_ok = |atom: &str| !atom.is_empty() && atom.chars().all(|c| c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c));
    if !local.split('.').all(atom_ok) {
        return Err(format!("{local:?} is not a valid part before @ (letters, digits, !#$%&'*+-/=?^_`{{|}}~, single dots inside)"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) || domain.len() > 253 {
        return Err(format!("{domain:?} is not a domain name"));
    }
    Ok(())
}

/// A message's subject and its two bodies, before MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes for people: 1536 → "1.5 KiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The newest successful backup of a database, as an alert about it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastGoodBackup {
    pub database: String,
    /// `None`: the database has never been backed up successfully.
    pub backup: Option<BackupSummary>,
}

/// One stored backup, for messages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    pub key: String,
    pub bytes: u64,
    pub rows: u64,
    pub created_at: DateTime<Utc>,
}

/// What an alert's email says beyond the alert itself, looked up when it is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertContext {
    /// The link to the alert's job on the dashboard (or the dashboard), when configured.
    pub dashboard_link: Option<String>,
    /// The bucket the failure is about (the off-site bucket of a failed copy).
    pub bucket: Option<String>,
    /// The last good backup of each database the alert is about.
    pub last_good: Vec<LastGoodBackup>,
}

/// The email of one alert: what failed, the database (or bucket), the error, the link to the
/// job on the dashboard and the last good backup.
pub fn alert_email(alert: &Alert, context: &AlertContext, at: DateTime<Utc>) -> EmailContent {
    let heading = title(alert);
    // (label, value, link)
    let mut facts: Vec<(String, String, Option<String>)> = vec![("What".into(), alert.kind.title().to_owned(), None)];
    if let Some(db) = &alert.database {
        facts.push(("Database".into(), db.clone(), None));
    }
    if let Some(bucket) = &context.bucket {
        facts.push(("Bucket".into(), bucket.clone(), None));
    }
    if let Some(job) = &alert.job_id {
        facts.push(("Job".into(), job.clone(), None));
    }
    facts.push(("When".into(), at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), None));
    if let Some(link) = &context.dashboard_link {
        facts.push(("Dashboard".into(), link.clone(), Some(link.clone())));
    }
    for last in &context.last_good {
        let label = if context.last_good.len() == 1 && alert.database.is_some() {
            "Last good backup".to_owned()
        } else {
            format!("Last good backup of {}", last.database)
        };
        let value = match &last.backup {
            Some(b) => format!(
                "{} ({}, {} rows, {})",
                b.key,
                human_bytes(b.bytes),
                b.rows,
                b.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => "none: never backed up successfully".to_owned(),
        };
        facts.push((label, value, None));
    }
    let details = match &alert.details {
        serde_json::Value::Null => None,
        serde_json::Value::Object(map) if map.is_empty() => None,
        other => serde_json::to_string_pretty(other).ok(),
    };

    let mut text = format!("{heading}\n\n{}\n\n", alert.message);
    let width = facts.iter().map(|(label, _, _)| label.chars().count()).max().unwrap_or(0) + 1;
    for (label, value, _) in &facts {
        text.push_str(&format!("{:<width$} {value}\n", format!("{label}:")));
    }
    if let Some(details) = &details {
        text.push_str(&format!("\nDetails:\n{details}\n"));
    }
    text.push_str(&format!("\n-- \nSent by {SENDER_NAME} ({})\n", alert.kind));

    let color = if alert.kind.is_bad_news() { "#d93f0b" } else { "#2da44e" };
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif; color: #1f2328;\">\n\
         <h2 style=\"color: {color};\">{title}</h2>\n<p>{message}</p>\n<table cellpadding=\"4\">\n",
        title = html_escape(&heading),
        message = html_escape(&alert.message),
    );
    for (label, value, link) in &facts {
        let value = match link {
            Some(href) => format!("<a href=\"{}\">{}</a>", html_escape(href), html_escape(value)),
            None => html_escape(value),
        };
        html.push_str(&format!("<tr><th align=\"left\">{}</th><td>{value}</td></tr>\n", html_escape(label)));
    }
    html.push_str("</table>\n");
    if let Some(details) = &details {
        html.push_str(&format!("<pre>{}</pre>\n", html_escape(details)));
    }
    html.push_str(&format!(
        "<p style=\"color: #656d76; font-size: small;\">Sent by {SENDER_NAME} ({})</p>\n</body></html>\n",
        alert.kind
    ));
    EmailContent { subject: format!("[{SENDER_NAME}] {heading}"), text, html }
}

/// The email for an alert: the digest's own message for a digest, else the alert's.
pub fn email_for(alert: &Alert, context: &AlertContext, at: DateTime<Utc>) -> Result<EmailContent, String> {
    match alert.kind {
        AlertKind::Digest => {
            let digest: crate::digest::Digest = serde_json::from_value(alert.details.clone())
                .map_err(|e| format!("the digest's recorded details are unreadable: {e}"))?;
            Ok(crate::digest::digest_email(&digest, context.dashboard_link.as_deref()))
        }
        _ => Ok(alert_email(alert, context, at)),
    }
}

/// The `Message-ID` of the email of alert `alert_id`: the same for every try of one alert, so a
/// mail client shows a retried message once. On the sender's domain, as RFC 5322 advises.
pub fn message_id(alert_id: u64, created_at: DateTime<Utc>, from: &str) -> String {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
    format!("<{SENDER_NAME}.alert-{alert_id}.{}@{domain}>", created_at.format("%Y%m%dT%H%M%S%3fZ"))
}

/// Encodes a header value as RFC 2047 encoded-words when it is not plain printable ASCII:
/// UTF-8, base64 ("B"), each word at most 75 characters and never splitting a character,
/// folded onto continuation lines. Control characters (a CR or LF would start a new header)
/// become spaces first.
pub fn encode_header_value(value: &str) -> String {
    let value: String = value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if value.is_ascii() {
        return value;
    }
    // "=?UTF-8?B?" + "?=" leave 63 characters of base64 in a 75-character word: 45 bytes.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(w.as_bytes())))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// A date as RFC 5322 writes it: `Mon, 23 Nov 2026 03:00:00 +0000`.
pub fn rfc5322_date(at: DateTime<Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// Base64 in lines of 76 characters ended by CRLF (RFC 2045).
fn base64_lines(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

/// The complete message: headers, then the text and HTML alternatives (the client shows the
/// last one it can, so HTML comes second). `to` are all recipients, in the `To` header; each
/// copy goes to one of them as its envelope recipient.
pub fn mime_message(from: &str, to: &[String], content: &EmailContent, date: DateTime<Utc>, message_id: &str) -> String {
    // The boundary cannot occur in the base64 bodies ("=_" is never in base64 text).
    let digest = crate::sha256::sha256_hex(message_id.as_bytes());
    let boundary = format!("=_{SENDER_NAME}_{}", &digest[..24]);
    let mut m = String::new();
    let mut header = |name: &str, value: &str| {
        m.push_str(name);
        m.push_str(": ");
        m.push_str(value);
        m.push_str("\r\n");
    };
    header("From", &format!("{SENDER_NAME} <{from}>"));
    // One address a line: any number of recipients stays within 78 characters a line.
    header("To", &to.join(",\r\n "));
    header("Subject", &encode_header_value(&content.subject));
    header("Date", &rfc5322_date(date));
    header("Message-ID", message_id);
    header("MIME-Version", "1.0");
    header("Auto-Submitted", "auto-generated");
    // Folded: with the boundary the line would pass 78 characters.
    header("Content-Type", &format!("multipart/alternative;\r\n boundary=\"{boundary}\""));
    m.push_str("\r\n");
    for (kind, body) in [("text/plain", &content.text), ("text/html", &content.html)] {
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str(&format!("Content-Type: {kind}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"));
        // Bodies are written with \n; mail wants CRLF.
        m.push_str(&base64_lines(body.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes()));
    }
    m.push_str(&format!("--{boundary}--\r\n"));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn vars(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name: &str| (name == "ALERT_EMAIL").then(|| value.to_string())
    }

    /// The body of one MIME part, base64 decoded.
    fn part(raw: &str, content_type: &str) -> String {
        let start = raw.find(&format!("Content-Type: {content_type}; charset=utf-8")).expect(content_type);
        let body = &raw[start..];
        let body = &body[body.find("\r\n\r\n").unwrap() + 4..];
        let body = &body[..body.find("\r\n--").unwrap()];
        let bytes = base64::engine::general_purpose::STANDARD.decode(body.replace("\r\n", "")).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn addresses_are_checked() {
        for good in ["ops@example.com", "first.last+tag@sub.example.co.uk", "a_b-c@x-y.io", "o'brien@example.org"] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for bad in [
            "", "ops", "ops@", "@example.com", "ops@example", "ops@@example.com", "o..ps@example.com", ".ops@example.com",
            "ops.@example.com", "ops@-example.com", "ops@example..com", "ops@exam ple.com", "Ops <ops@example.com>",
            "ops@example.com\r\nBcc: evil@example.com", "jörg@example.com", "ops@exämple.com", "\"quoted\"@example.com",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_address(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn the_configuration_is_read_and_refused_clearly() {
        assert_eq!(EmailConfig::from_vars(&|_| None).unwrap(), None);
        assert_eq!(EmailConfig::from_vars(&vars("  ")).unwrap(), None);
        let config = EmailConfig::from_vars(&vars(
            r#"{"from": "backups@example.com", "to": ["ops@example.com", " cto@example.com "], "digest": "weekly",
                "dashboard": "https://backup.example.workers.dev/dashboard"}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(config.to, ["ops@example.com", "cto@example.com"]);
        assert_eq!(config.digest, Some(DigestSchedule::Weekly));
        assert_eq!(config.dashboard_link(Some("j1")).as_deref(), Some("https://backup.example.workers.dev/dashboard#job-j1"));
        let one = EmailConfig::from_vars(&vars(r#"{"from": "b@example.com", "to": "ops@example.com"}"#)).unwrap().unwrap();
        assert_eq!((one.to.as_slice(), one.digest, one.dashboard_link(None)), (&["ops@example.com".to_string()][..], None, None));
        for (bad, expected) in [
            (r#"{"from": "not-an-address", "to": ["ops@example.com"]}"#, "from \"not-an-address\" is not an email address"),
            (r#"{"from": "b@example.com", "to": ["ops@example.com", "ops(at)example.com"]}"#, "to entry 2 \"ops(at)example.com\""),
            (r#"{"from": "b@example.com", "to": []}"#, "to lists no recipient"),
            (r#"{"from": "b@example.com", "to": ["o@example.com"], "digest": "hourly"}"#, "digest must be"),
            (r#"{"from": "b@example.com", "to": ["o@example.com"], "dashboard": "ftp://x"}"#, "dashboard \"ftp://x\""),
            (r#"{"from": "b@example.com", "to": ["o@example.com"], "cc": ["x@example.com"]}"#, "unknown field `cc`"),
            ("b@example.com", "must be an object"),
        ] {
            let err = EmailConfig::from_vars(&vars(bad)).unwrap_err().0;
            assert!(err.starts_with("ALERT_EMAIL: ") && err.contains(expected), "{bad}: {err}");
        }
        let err = one.check_binding(false).unwrap_err().0;
        assert!(err.contains("no send_email binding named SEND_EMAIL"), "{err}");
        assert_eq!(one.check_binding(true), Ok(()));
    }

    #[test]
    fn non_ascii_subjects_are_rfc_2047_encoded_words_of_at_most_75_characters() {
        assert_eq!(encode_header_value("[d1-backup] Backup failed: demo"), "[d1-backup] Backup failed: demo");
        assert_eq!(encode_header_value("a\r\nBcc: x@example.com"), "a  Bcc: x@example.com");
        let subject = "Sauvegarde échouée : données « clients » — ".repeat(3) + "😱";
        let encoded = encode_header_value(&subject);
        let mut decoded = String::new();
        for (i, line) in encoded.split("\r\n").enumerate() {
            let word = if i == 0 { line } else { line.strip_prefix(' ').expect("continuation lines start with a space") };
            assert!(word.len() <= 75, "{word}");
            let b64 = word.strip_prefix("=?UTF-8?B?").and_then(|w| w.strip_suffix("?=")).expect(word);
            // Each word decodes to whole characters on its own.
            decoded.push_str(&String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap());
        }
        assert_eq!(decoded, subject);
        assert!(encoded.split("\r\n").count() > 2);
    }

    #[test]
    fn the_mime_message_has_both_alternatives_crlf_lines_and_the_headers() {
        let content = EmailContent {
            subject: "Backup failed: démo".into(),
            text: "Line one\nLigne deux é\n".into(),
            html: "<p>é</p>\n".into(),
        };
        let id = message_id(42, at("2026-11-23T03:00:00.5Z"), "backups@example.com");
        assert_eq!(id, "<d1-backup.alert-42.20261123T030000500Z@example.com>");
        let raw = mime_message("backups@example.com", &["ops@example.com".into(), "cto@example.com".into()], &content, at("2026-11-23T03:00:00Z"), &id);
        assert!(!raw.replace("\r\n", "").contains('\n'), "every line ends with CRLF");
        assert!(raw.lines().all(|l| l.len() <= 78), "no line is longer than 78 characters");
        assert!(raw.is_ascii());
        let (head, _) = raw.split_once("\r\n\r\n").unwrap();
        let headers: Vec<&str> = head.split("\r\n").collect();
        assert!(headers.contains(&"From: d1-backup <backups@example.com>"));
        assert!(head.contains("\r\nTo: ops@example.com,\r\n cto@example.com\r\n"));
        assert!(headers.contains(&"Date: Mon, 23 Nov 2026 03:00:00 +0000"));
        assert!(headers.contains(&"Message-ID: <d1-backup.alert-42.20261123T030000500Z@example.com>"));
        assert!(headers.contains(&"MIME-Version: 1.0"));
        assert!(headers.iter().any(|h| h.starts_with("Subject: =?UTF-8?B?")));
        let boundary = head.split("boundary=\"").nth(1).unwrap().trim_end_matches('"');
        assert_eq!(raw.matches(&format!("--{boundary}\r\n")).count(), 2);
        assert!(raw.ends_with(&format!("--{boundary}--\r\n")));
        assert_eq!(part(&raw, "text/plain"), "Line one\r\nLigne deux é\r\n");
        assert_eq!(part(&raw, "text/html"), "<p>é</p>\r\n");
        assert!(raw.find("text/plain").unwrap() < raw.find("text/html").unwrap(), "HTML is the preferred, last alternative");
    }

    #[test]
    fn an_alert_email_says_what_failed_where_why_and_the_last_good_backup() {
        let alert = Alert {
            kind: AlertKind::RunDead,
            database: Some("hostile".into()),
            job_id: Some("job-1".into()),
            message: "backup of hostile is dead after 6 attempts: injected fault <script>".into(),
            details: serde_json::Value::Null,
            subject: None,
        };
        let context = AlertContext {
            dashboard_link: Some("https://b.example.com/dashboard#job-job-1".into()),
            bucket: None,
            last_good: vec![LastGoodBackup {
                database: "hostile".into(),
                backup: Some(BackupSummary {
                    key: "daily/2026-11-22/hostile.sql".into(),
                    bytes: 2048,
                    rows: 12,
                    created_at: at("2026-11-22T03:00:04Z"),
                }),
            }],
        };
        let email = alert_email(&alert, &context, at("2026-11-23T03:01:00Z"));
        assert_eq!(email.subject, "[d1-backup] Backup failed for good: hostile");
        for expected in [
            "injected fault <script>",
            "Database:         hostile",
            "Job:              job-1",
            "Dashboard:        https://b.example.com/dashboard#job-job-1",
            "Last good backup: daily/2026-11-22/hostile.sql (2.0 KiB, 12 rows, 2026-11-22T03:00:04Z)",
        ] {
            assert!(email.text.contains(expected), "{expected:?} not in\n{}", email.text);
        }
        assert!(email.html.contains("injected fault &lt;script&gt;") && !email.html.contains("<script>"));
        assert!(email.html.contains("<a href=\"https://b.example.com/dashboard#job-job-1\">"));
        let never = AlertContext { last_good: vec![LastGoodBackup { database: "hostile".into(), backup: None }], ..AlertContext::default() };
        assert!(alert_email(&alert, &never, at("2026-11-23T03:01:00Z")).text.contains("none: never backed up successfully"));
        let copy = Alert { kind: AlertKind::ReplicaDead, database: None, job_id: None, ..alert };
        let bucket = AlertContext { bucket: Some("offsite-bucket".into()), ..AlertContext::default() };
        let email = alert_email(&copy, &bucket, at("2026-11-23T03:01:00Z"));
        assert!(email.text.contains("Bucket: offsite-bucket") && email.subject == "[d1-backup] Off-site copy failed", "{}", email.text);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
