//! Off-site copies: every finished backup and weekly archive copied to an S3-compatible bucket
//! outside Cloudflare (AWS S3, Backblaze B2, MinIO, another R2 account), so that an account
//! suspension, a deleted bucket or a bad token cannot take the backups with the data.
//!
//! - [`OffsiteConfig`]: where (the `OFFSITE` var) and how long copies are kept.
//! - [`s3_request`]: one S3 call, signed (SigV4) as plain data: the Worker only sends it.
//! - [`replicate_step`]: one step of a copy, over two [`ObjectStore`]s: the source (R2) read a
//!   part at a time at its offset (a stored object is random access, so nothing is parked
//!   between steps), each part uploaded with its SHA-256 signed (the store refuses a part whose
//!   bytes differ), and the whole copy's SHA-256 compared with the one recorded at backup time.

use crate::config::ConfigError;
use crate::ports::{Clock, ObjectInfo, ObjectStore, PortError, UploadedPart};
use crate::sha256::{sha256_hex, ResumableSha256};
use crate::sigv4::{self, Credentials, Request, Scope};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The smallest part S3 accepts (all but the last part of an upload).
pub const MIN_PART_MB: u32 = 5;

/// How copies are kept once the local object is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsiteRetention {
    /// Deleted off-site this many days after retention deleted the local object.
    Mirror { grace_days: u32 },
    /// Never deleted off-site (buckets with object lock).
    AppendOnly,
}

/// The `OFFSITE` var: `{"endpoint": "https://s3.eu-west-1.amazonaws.com", "region": "eu-west-1",
/// "bucket": "my-backups", "prefix": "d1/", "retention": "mirror", "graceDays": 7}`, with the key
/// pair in the secrets `OFFSITE_ACCESS_KEY_ID` and `OFFSITE_SECRET_ACCESS_KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsiteConfig {
    /// `https://host[:port]`, without a path.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Put before every key (`d1/` → `d1/daily/2026-11-23/db.sql`).
    pub prefix: String,
    pub retention: OffsiteRetention,
    /// Bytes per part of a multipart copy.
    pub part_size: usize,
    /// The key pair, from secrets only the consumer needs (`None` where they are not set).
    pub credentials: Option<Credentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OffsiteVar {
    endpoint: String,
    region: String,
    bucket: String,
    #[serde(default)]
    prefix: String,
    #[serde(default = "mirror")]
    retention: String,
    #[serde(default = "default_grace")]
    grace_days: u32,
    #[serde(default = "default_part_mb")]
    part_mb: u32,
}

fn mirror() -> String {
    "mirror".into()
}

fn default_grace() -> u32 {
    7
}

fn default_part_mb() -> u32 {
    16
}

impl OffsiteConfig {
    /// Reads the `OFFSITE` var (JSON) and the two secrets; `None` when `OFFSITE` is unset.
    pub fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Result<Option<OffsiteConfig>, ConfigError> {
        let Some(text) = get("OFFSITE") else { return Ok(None) };
        let bad = |m: String| ConfigError(format!("OFFSITE: {m}"));
        let var: OffsiteVar = serde_json::from_str(&text).map_err(|e| {
            bad(format!("must be an object {{endpoint, region, bucket, prefix, retention, graceDays, partMb}}: {e}"))
        })?;
        let endpoint = var.endpoint.trim_end_matches('/').to_owned();
        let host = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .ok_or_else(|| bad(format!("endpoint {:?} must start with https:// (or http:// for a local store)", var.endpoint)))?;
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(bad(format!("endpoint {:?} must be scheme and host only, without a path", var.endpoint)));
        }
        let bucket_ok = (3..=63).contains(&var.bucket.len())
            && var.bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(format!("bucket {:?} is not a valid S3 bucket name", var.bucket)));
        }
        if var.region.is_empty() || !var.region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad(format!("region {:?} is not a region name (us-east-1, auto, ...)", var.region)));
        }
        if var.prefix.starts_with('/') || var.prefix.contains("//") {
            return Err(bad(format!("prefix {:?} must not start with / or hold //", var.prefix)));
        }
        let retention = match var.retention.as_str() {
            "mirror" => OffsiteRetention::Mirror { grace_days: var.grace_days },
            "append-only" => OffsiteRetention::AppendOnly,
            other => return Err(bad(format!("retention must be \"mirror\" or \"append-only\", not {other:?}"))),
        };
        if !(MIN_PART_MB..=512).contains(&var.part_mb) {
            return Err(bad(format!("partMb must be from {MIN_PART_MB} to 512, not {}", var.part_mb)));
        }
        let secret = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Ok(Some(OffsiteConfig {
            endpoint,
            region: var.region,
            bucket: var.bucket,
            prefix: var.prefix,
            retention,
            part_size: var.part_mb as usize * 1024 * 1024,
            credentials: match (secret("OFFSITE_ACCESS_KEY_ID"), secret("OFFSITE_SECRET_ACCESS_KEY")) {
                (Some(access_key_id), Some(secret_access_key)) => {
                    Some(Credentials { access_key_id, secret_access_key, session_token: None })
                }
                (None, None) => None,
                _ => return Err(bad("set both OFFSITE_ACCESS_KEY_ID and OFFSITE_SECRET_ACCESS_KEY, or neither".into())),
            },
        }))
    }

    /// The key pair the copies are signed with, or why there is none.
    pub fn credentials(&self) -> Result<&Credentials, PortError> {
        self.credentials.as_ref().ok_or_else(|| {
            PortError::rejected("the secrets OFFSITE_ACCESS_KEY_ID and OFFSITE_SECRET_ACCESS_KEY are not set on the consumer")
        })
    }

    /// The off-site key of the local object `key`.
    pub fn offsite_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn host(&self) -> &str {
        self.endpoint.split_once("://").map_or(&self.endpoint, |(_, host)| host)
    }
}

/// One S3 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Call<'a> {
    Put { key: &'a str, payload_sha256: &'a str, content_type: &'a str },
    /// `range`: first and last byte, inclusive.
    Get { key: &'a str, range: Option<(u64, u64)> },
    Head { key: &'a str },
    Delete { key: &'a str },
    CreateMultipart { key: &'a str, content_type: &'a str },
    UploadPart { key: &'a str, upload_id: &'a str, number: u16, payload_sha256: &'a str },
    Complete { key: &'a str, upload_id: &'a str, payload_sha256: &'a str },
    Abort { key: &'a str, upload_id: &'a str },
}

/// A signed request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Signs `call` for `config`'s bucket (path-style addressing, which every S3-compatible store
/// accepts) with `credentials` at `time`.
pub fn s3_request(config: &OffsiteConfig, credentials: &Credentials, time: DateTime<Utc>, call: &S3Call<'_>) -> S3Request {
    let (method, key, query, payload, extra): (&'static str, &str, Vec<(String, String)>, &str, Vec<(String, String)>) =
        match *call {
            S3Call::Put { key, payload_sha256, content_type } => {
                ("PUT", key, vec![], payload_sha256, vec![("content-type".into(), content_type.into())])
            }
            S3Call::Get { key, range } => (
                "GET",
                key,
                vec![],
                sigv4::EMPTY_SHA256,
                range.map(|(first, last)| vec![("range".to_string(), format!("bytes={first}-{last}"))]).unwrap_or_default(),
            ),
            S3Call::Head { key } => ("HEAD", key, vec![], sigv4::EMPTY_SHA256, vec![]),
            S3Call::Delete { key } => ("DELETE", key, vec![], sigv4::EMPTY_SHA256, vec![]),
            S3Call::CreateMultipart { key, content_type } => (
                "POST",
                key,
                vec![("uploads".into(), String::new())],
                sigv4::EMPTY_SHA256,
                vec![("content-type".into(), content_type.into())],
            ),
            S3Call::UploadPart { key, upload_id, number, payload_sha256 } => (
                "PUT",
                key,
                vec![("partNumber".into(), number.to_string()), ("uploadId".into(), upload_id.into())],
                payload_sha256,
                vec![],
            ),
            S3Call::Complete { key, upload_id, payload_sha256 } => {
                ("POST", key, vec![("uploadId".into(), upload_id.into())], payload_sha256, vec![])
            }
            S3Call::Abort { key, upload_id } => {
                ("DELETE", key, vec![("uploadId".into(), upload_id.into())], sigv4::EMPTY_SHA256, vec![])
            }
        };
    let scope = Scope { region: &config.region, service: "s3", time };
    let mut headers = vec![
        ("host".to_string(), config.host().to_owned()),
        ("x-amz-content-sha256".to_string(), payload.to_owned()),
        ("x-amz-date".to_string(), scope.amz_date()),
    ];
    headers.extend(extra);
    let path = format!("/{}/{key}", config.bucket);
    let request = Request { method, path: &path, query: &query, headers: &headers, payload_sha256: payload };
    let authorization = sigv4::authorization(credentials, &scope, &request);
    let query_text = sigv4::canonical_query(&query);
    let url = format!(
        "{}{}{}{}",
        config.endpoint,
        sigv4::uri_encode(&path, true),
        if query_text.is_empty() { "" } else { "?" },
        query_text
    );
    // `host` is the URL's; the runtime sets it.
    headers.retain(|(name, _)| name != "host");
    headers.push(("authorization".into(), authorization));
    S3Request { method, url, headers }
}

/// The body of CompleteMultipartUpload.
pub fn complete_body(parts: &[UploadedPart]) -> String {
    let parts: String = parts
        .iter()
        .map(|p| format!("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", p.number, xml_escape(&p.etag)))
        .collect();
    format!("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{parts}</CompleteMultipartUpload>")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The text of the first `<tag>` element of an S3 XML answer (`UploadId`, `Code`, `Message`).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// An S3 error answer, typed: a 4xx (but a timeout or throttling) is refused whatever the
/// retries (a wrong key, a missing bucket), a 5xx may pass.
pub fn s3_error(what: &str, status: u16, body: &str) -> PortError {
    let code = xml_text(body, "Code").unwrap_or_default();
    let message = xml_text(body, "Message").unwrap_or_default();
    let text = format!("off-site {what}: HTTP {status} {code}{}{message}", if message.is_empty() { "" } else { ": " });
    let retryable = status >= 500 || status == 408 || status == 429 || code == "SlowDown" || code == "RequestTimeout";
    if retryable {
        PortError::unavailable(text)
    } else {
        PortError::rejected(text)
    }
}

/// What to copy: a stored object with its recorded size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPlan {
    pub source_key: String,
    pub offsite_key: String,
    pub bytes: u64,
    pub sha256: String,
    pub content_type: String,
    pub part_size: usize,
}

/// How far a copy has got: the upload, its parts, and the source offset the next part starts at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCheckpoint {
    pub upload_id: Option<String>,
    pub parts: Vec<UploadedPart>,
    pub offset: u64,
    pub hash: ResumableSha256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaProgress {
    Paused(ReplicaCheckpoint),
    /// The copy is complete off-site, its size checked, its bytes the recorded ones.
    Done { bytes: u64, etag: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaError {
    /// The local object is missing or not the one recorded: nothing is copied.
    Source(String),
    /// The off-site store or R2 failed.
    Store(PortError),
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Source(m) => f.write_str(m),
            ReplicaError::Store(e) => e.fmt(f),
        }
    }
}

impl From<PortError> for ReplicaError {
    fn from(e: PortError) -> Self {
        ReplicaError::Store(e)
    }
}

/// One step of a copy: parts until `max_bytes` were copied or `max_millis` passed, then the
/// completion once every byte is off-site. A copy of at most one part is one put.
pub async fn replicate_step<S: ObjectStore, D: ObjectStore, C: Clock>(
    source: &mut S,
    dest: &mut D,
    clock: &C,
    plan: &ReplicaPlan,
    max_bytes: u64,
    max_millis: u64,
    from: Option<ReplicaCheckpoint>,
) -> Result<ReplicaProgress, ReplicaError> {
    let started = clock.now_millis();
    let info = ObjectInfo { content_type: plan.content_type.clone(), custom: Default::default() };
    match source.head(&plan.source_key).await? {
        Some(size) if size == plan.bytes => {}
        found => {
            return Err(ReplicaError::Source(format!(
                "{} holds {found:?} bytes, not the {} recorded: not copied",
                plan.source_key, plan.bytes
            )))
        }
    }
    if plan.bytes <= plan.part_size as u64 {
        let bytes = read(source, plan, 0, plan.bytes).await?;
        check_sha256(plan, sha256_hex(&bytes))?;
        dest.put(&plan.offsite_key, bytes, &info).await?;
        return finish(dest, plan).await;
    }
    let mut at = from.unwrap_or_default();
    // An earlier attempt may have completed the upload and died before recording it (the store
    // forgets a completed upload): the object's size tells.
    if at.upload_id.is_some() && dest.head(&plan.offsite_key).await? == Some(plan.bytes) {
        return finish(dest, plan).await;
    }
    let mut copied = 0u64;
    while at.offset < plan.bytes {
        if copied >= max_bytes || (clock.now_millis() - started) as u64 >= max_millis {
            return Ok(ReplicaProgress::Paused(at));
        }
        let upload_id = match &at.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = dest.create_multipart(&plan.offsite_key, &info).await?;
                at.upload_id = Some(id.clone());
                id
            }
        };
        let length = (plan.part_size as u64).min(plan.bytes - at.offset);
        let bytes = read(source, plan, at.offset, length).await?;
        at.hash.update(&bytes);
        let number = u16::try_from(at.parts.len() + 1)
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| ReplicaError::Source(format!("{} needs more than 10,000 parts: raise partMb", plan.source_key)))?;
        let etag = dest.upload_part(&plan.offsite_key, &upload_id, number, bytes).await?;
        at.parts.push(UploadedPart { number, etag });
        at.offset += length;
        copied += length;
    }
    check_sha256(plan, at.hash.hex_digest())?;
    let upload_id = at.upload_id.clone().expect("a multipart copy has its upload");
    if dest.head(&plan.offsite_key).await? != Some(plan.bytes) {
        dest.complete_multipart(&plan.offsite_key, &upload_id, &at.parts).await?;
    }
    finish(dest, plan).await
}

async fn read<S: ObjectStore>(source: &mut S, plan: &ReplicaPlan, offset: u64, length: u64) -> Result<Vec<u8>, ReplicaError> {
    let bytes = source
        .get_range(&plan.source_key, offset, length)
        .await?
        .ok_or_else(|| ReplicaError::Source(format!("{} is missing from the bucket: not copied", plan.source_key)))?;
    if bytes.len() as u64 != length {
        return Err(ReplicaError::Store(PortError::unavailable(format!(
            "{} gave {} bytes at {offset}, expected {length}",
            plan.source_key,
            bytes.len()
        ))));
    }
    Ok(bytes)
}

/// The bytes read from the source (`sha256`, all of them) are the ones recorded at backup time.
fn check_sha256(plan: &ReplicaPlan, sha256: String) -> Result<(), ReplicaError> {
    if sha256 == plan.sha256 {
        return Ok(());
    }
    Err(ReplicaError::Source(format!(
        "{} has SHA-256 {sha256}, not the {} recorded: not copied",
        plan.source_key, plan.sha256
    )))
}

/// Nothing is recorded as copied without the whole object off-site (one read of its size and
/// ETag).
async fn finish<D: ObjectStore>(dest: &mut D, plan: &ReplicaPlan) -> Result<ReplicaProgress, ReplicaError> {
    match dest.head_with_etag(&plan.offsite_key).await? {
        Some((size, etag)) if size == plan.bytes => Ok(ReplicaProgress::Done { bytes: size, etag }),
        found => Err(ReplicaError::Store(PortError::unavailable(format!(
            "off-site {} holds {:?} bytes after the copy, expected {}",
            plan.offsite_key,
            found.map(|(size, _)| size),
            plan.bytes
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortErrorKind;
    use chrono::TimeZone;

    fn config() -> OffsiteConfig {
        let vars = |name: &str| match name {
            "OFFSITE" => Some(r#"{"endpoint": "http://127.0.0.1:9000/", "region": "us-east-1", "bucket": "backups", "prefix": "d1/", "partMb": 5}"#.into()),
            "OFFSITE_ACCESS_KEY_ID" => Some("AKID".into()),
            "OFFSITE_SECRET_ACCESS_KEY" => Some("secret".into()),
            _ => None,
        };
        OffsiteConfig::from_vars(&vars).unwrap().unwrap()
    }

    #[test]
    fn the_var_is_read_whole_and_refused_with_its_reason() {
        let c = config();
        assert_eq!((c.endpoint.as_str(), c.host()), ("http://127.0.0.1:9000", "127.0.0.1:9000"));
        assert_eq!(c.retention, OffsiteRetention::Mirror { grace_days: 7 });
        assert_eq!(c.part_size, 5 * 1024 * 1024);
        assert_eq!(c.offsite_key("daily/2026-11-23/a.sql"), "d1/daily/2026-11-23/a.sql");
        assert_eq!(OffsiteConfig::from_vars(&|_| None), Ok(None));
        for (var, why) in [
            (r#"{"endpoint": "s3.amazonaws.com", "region": "us-east-1", "bucket": "abc"}"#, "https://"),
            (r#"{"endpoint": "https://h/x", "region": "us-east-1", "bucket": "abc"}"#, "without a path"),
            (r#"{"endpoint": "https://h", "region": "us-east-1", "bucket": "A_B"}"#, "bucket"),
            (r#"{"endpoint": "https://h", "region": "us-east-1", "bucket": "abc", "retention": "forever"}"#, "append-only"),
            (r#"{"endpoint": "https://h", "region": "us-east-1", "bucket": "abc", "partMb": 1}"#, "partMb"),
            (r#"{"endpoint": "https://h", "region": "us-east-1", "bucket": "abc", "color": 1}"#, "unknown field"),
        ] {
            let get = |name: &str| (name == "OFFSITE").then(|| var.to_string()).or(Some("x".into()));
            let err = OffsiteConfig::from_vars(&get).unwrap_err();
            assert!(err.0.starts_with("OFFSITE: ") && err.0.contains(why), "{var}: {err}");
        }
        let no_secret = |name: &str| (name == "OFFSITE").then(|| r#"{"endpoint": "https://h", "region": "auto", "bucket": "abc"}"#.into());
        let without = OffsiteConfig::from_vars(&no_secret).unwrap().unwrap();
        assert!(without.credentials().unwrap_err().message.contains("OFFSITE_ACCESS_KEY_ID"));
        let one_secret = |name: &str| no_secret(name).or((name == "OFFSITE_ACCESS_KEY_ID").then(|| "AKID".into()));
        assert!(OffsiteConfig::from_vars(&one_secret).unwrap_err().0.contains("or neither"));
    }

    #[test]
    fn requests_are_path_style_and_signed_over_their_payload() {
        let time = Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap();
        let part = S3Call::UploadPart { key: "d1/daily/2026-12-03/a b.sql", upload_id: "u/1", number: 2, payload_sha256: "ab" };
        let c = config();
        let r = s3_request(&c, c.credentials().unwrap(), time, &part);
        assert_eq!(r.method, "PUT");
        assert_eq!(r.url, "http://127.0.0.1:9000/backups/d1/daily/2026-12-03/a%20b.sql?partNumber=2&uploadId=u%2F1");
        let header = |n: &str| r.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(header("x-amz-content-sha256"), Some("ab"));
        assert_eq!(header("x-amz-date"), Some("20261203T040506Z"));
        let auth = header("authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20261203/us-east-1/s3/aws4_request, "), "{auth}");
        assert!(auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"), "{auth}");
        let create = s3_request(&c, c.credentials().unwrap(), time, &S3Call::CreateMultipart { key: "k", content_type: "application/gzip" });
        assert_eq!((create.method, create.url.as_str()), ("POST", "http://127.0.0.1:9000/backups/k?uploads="));
    }

    #[test]
    fn answers_are_read_and_errors_typed() {
        let xml = "<InitiateMultipartUploadResult><Bucket>b</Bucket><UploadId>a&amp;b</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_text(xml, "UploadId").as_deref(), Some("a&b"));
        let denied = "<Error><Code>InvalidAccessKeyId</Code><Message>The key does not exist</Message></Error>";
        let e = s3_error("put of k", 403, denied);
        assert_eq!(e.kind, PortErrorKind::Rejected);
        assert_eq!(e.message, "off-site put of k: HTTP 403 InvalidAccessKeyId: The key does not exist");
        assert_eq!(s3_error("put", 503, "<Error><Code>SlowDown</Code></Error>").kind, PortErrorKind::Unavailable);
        let body = complete_body(&[UploadedPart { number: 1, etag: "\"e1\"".into() }]);
        assert!(body.contains("<Part><PartNumber>1</PartNumber><ETag>&quot;e1&quot;</ETag></Part>"), "{body}");
    }
}
