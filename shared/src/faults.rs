//! Fault injection, for proving the queue pipeline's behaviour under failure.
//!
//! A local or test stack's `POST /trigger` accepts `faults`: per database, a stage at which the
//! export fails and for how many delivery attempts. The fault travels in the queue message and
//! the consumer wraps its D1 source and R2 store so that they fail at that stage while the
//! message's attempt number is within the count. A production producer refuses such requests
//! (see `trigger`), so no message there ever carries a fault.

use crate::ports::{ObjectInfo, ObjectStore, PortError, SqlSource, UploadedPart};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultStage {
    /// Every query to the source database.
    D1Query,
    /// Every write of the dump's bytes to R2 (part uploads and puts).
    R2Part,
    /// Making the object visible: the final put or the multipart completion.
    Complete,
    /// Sending the message of the next step, after the step's checkpoint is recorded (the send
    /// is lost; the sweeper must send it).
    ContinueSend,
    /// Sending the job's first message when the job is recorded (lost likewise).
    EnqueueSend,
    /// The lease of the delivery runs out at the end of its step, before it records the step,
    /// and another delivery takes the task over (as when a step outlasts its lease). Counted
    /// by the lease's fencing token: `failAttempts: 1` hits the task's first lease only.
    LeaseExpiry,
    /// D1 refuses the restore's first batch of rows (after the target was emptied), as it
    /// refuses a statement: the restore must put the target back.
    RestoreBatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    pub stage: FaultStage,
    /// Delivery attempts (1-based) that fail: 2 fails the first two, then the third succeeds.
    pub fail_attempts: u32,
}

impl Fault {
    /// Whether `stage` fails on delivery attempt `attempt`.
    pub fn fails(fault: Option<&Fault>, stage: FaultStage, attempt: u32) -> bool {
        fault.is_some_and(|f| f.stage == stage && attempt <= f.fail_attempts)
    }
}

fn injected(stage: FaultStage, attempt: u32) -> PortError {
    PortError::unavailable(format!("injected fault: {stage:?} fails on attempt {attempt}"))
}

/// A source that fails every query while the fault is active.
pub struct FaultySource<S> {
    pub inner: S,
    pub fault: Option<Fault>,
    pub attempt: u32,
}

impl<S: SqlSource> SqlSource for FaultySource<S> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        if Fault::fails(self.fault.as_ref(), FaultStage::D1Query, self.attempt) {
            return Err(injected(FaultStage::D1Query, self.attempt));
        }
        self.inner.query(sql).await
    }

    fn bookmark(&self) -> Option<String> {
        self.inner.bookmark()
    }
}

/// A store that fails writes (or the completion) while the fault is active.
pub struct FaultyStore<O> {
    pub inner: O,
    pub fault: Option<Fault>,
    pub attempt: u32,
    /// The dump's final key: a put there is the completion of a small dump.
    pub target_key: String,
}

impl<O> FaultyStore<O> {
    fn check(&self, stage: FaultStage) -> Result<(), PortError> {
        if Fault::fails(self.fault.as_ref(), stage, self.attempt) {
            return Err(injected(stage, self.attempt));
        }
        Ok(())
    }
}

impl<O: ObjectStore> ObjectStore for FaultyStore<O> {
    async fn put(&mut self, key: &str, bytes: Vec<u8>, info: &ObjectInfo) -> Result<(), PortError> {
        self.check(FaultStage::R2Part)?;
        if key == self.target_key {
            self.check(FaultStage::Complete)?;
        }
        self.inner.put(key, bytes, info).await
    }

    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        self.inner.get(key).await
    }

    async fn get_range(&mut self, key: &str, offset: u64, length: u64) -> Result<Option<Vec<u8>>, PortError> {
        self.inner.get_range(key, offset, length).await
    }

    async fn head(&mut self, key: &str) -> Result<Option<u64>, PortError> {
        self.inner.head(key).await
    }

    async fn delete(&mut self, key: &str) -> Result<(), PortError> {
        self.inner.delete(key).await
    }

    async fn create_multipart(&mut self, key: &str, info: &ObjectInfo) -> Result<String, PortError> {
        self.inner.create_multipart(key, info).await
    }

    async fn upload_part(&mut self, key: &str, upload_id: &str, number: u16, bytes: Vec<u8>) -> Result<String, PortError> {
        self.check(FaultStage::R2Part)?;
        self.inner.upload_part(key, upload_id, number, bytes).await
    }

    async fn complete_multipart(&mut self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), PortError> {
        self.check(FaultStage::Complete)?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&mut self, key: &str, upload_id: &str) -> Result<(), PortError> {
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn gzip_member(&mut self, plain: &[u8]) -> Result<Vec<u8>, PortError> {
        self.inner.gzip_member(plain).await
    }

    fn digest_reads(&mut self, key: &str) -> bool {
        self.inner.digest_reads(key)
    }

    async fn read_digest(&mut self) -> Result<String, PortError> {
        self.inner.read_digest().await
    }

    async fn sha256(&mut self, key: &str) -> Result<Option<(u64, String)>, PortError> {
        self.inner.sha256(key).await
    }
}

/// A restore target whose first batch of rows for `operation` D1 refuses (fault `restore_batch`,
/// on the attempts the fault names). Batches of another operation (the rollback) go through.
pub struct FaultyTarget<T> {
    pub inner: T,
    pub fault: Option<Fault>,
    pub attempt: u32,
    /// The operation's id, as its batches name it in their fence.
    pub operation: String,
}

impl<T: SqlSource> SqlSource for FaultyTarget<T> {
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PortError> {
        self.inner.query(sql).await
    }
}

impl<T: crate::restore::SqlTarget> crate::restore::SqlTarget for FaultyTarget<T> {
    async fn execute_batch(&mut self, statements: &[String]) -> Result<(), PortError> {
        let ours = format!("= {}", crate::dump::sql::string_literal(&self.operation));
        let rows_of_ours = statements.iter().any(|s| s.starts_with("INSERT INTO \"") && !s.starts_with("INSERT INTO \"_d1_backup_"))
            && statements.iter().any(|s| s.ends_with(&ours) || s.contains(&format!("{ours} ")));
        if rows_of_ours && Fault::fails(self.fault.as_ref(), FaultStage::RestoreBatch, self.attempt) {
            self.fault = None;
            return Err(PortError::rejected(format!(
                "injected fault: D1 refused a batch of rows on attempt {}: SQLITE_CONSTRAINT",
                self.attempt
            )));
        }
        self.inner.execute_batch(statements).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fails_its_stage_for_its_attempts_only() {
        let fault = Fault { stage: FaultStage::R2Part, fail_attempts: 2 };
        assert!(Fault::fails(Some(&fault), FaultStage::R2Part, 1));
        assert!(Fault::fails(Some(&fault), FaultStage::R2Part, 2));
        assert!(!Fault::fails(Some(&fault), FaultStage::R2Part, 3));
        assert!(!Fault::fails(Some(&fault), FaultStage::D1Query, 1));
        assert!(!Fault::fails(None, FaultStage::D1Query, 1));
    }

    #[test]
    fn faults_parse_strictly() {
        let f: Fault = serde_json::from_str(r#"{"stage":"d1_query","failAttempts":99}"#).unwrap();
        assert_eq!(f, Fault { stage: FaultStage::D1Query, fail_attempts: 99 });
        assert!(serde_json::from_str::<Fault>(r#"{"stage":"disk","failAttempts":1}"#).is_err());
        let lost: Fault = serde_json::from_str(r#"{"stage":"continue_send","failAttempts":1}"#).unwrap();
        assert_eq!(lost.stage, FaultStage::ContinueSend);
        assert!(serde_json::from_str::<Fault>(r#"{"stage":"complete","failAttempts":1,"x":1}"#).is_err());
    }
}
