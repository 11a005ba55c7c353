//! Run and job states, and how a job's status derives from its runs.
//!
//! A run is one database in one job, a task of the engine (`crate::task`) that ends
//! `succeeded` or `dead`.
//! A job has no state of its own: its status is always computed from its runs, so the two can
//! never disagree.

use crate::task::TaskState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Nothing has started yet.
    Queued,
    /// At least one run is not final.
    Running,
    /// Every run succeeded.
    Completed,
    /// Every run is final, some succeeded and some are dead.
    Partial,
    /// Every run is dead.
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Partial => "partial",
            JobStatus::Failed => "failed",
        }
    }
}

pub fn job_status(runs: &[TaskState]) -> JobStatus {
    if runs.is_empty() || runs.iter().all(|r| *r == TaskState::Queued) {
        return JobStatus::Queued;
    }
    if runs.iter().any(|r| !r.is_final()) {
        return JobStatus::Running;
    }
    let succeeded = runs.iter().filter(|r| **r == TaskState::Succeeded).count();
    match succeeded {
        n if n == runs.len() => JobStatus::Completed,
        0 => JobStatus::Failed,
        _ => JobStatus::Partial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn job_status_derives_from_runs() {
        assert_eq!(job_status(&[Queued, Queued]), JobStatus::Queued);
        assert_eq!(job_status(&[Succeeded, Queued]), JobStatus::Running);
        assert_eq!(job_status(&[Running, Dead]), JobStatus::Running);
        assert_eq!(job_status(&[Retrying]), JobStatus::Running);
        assert_eq!(job_status(&[Succeeded, Succeeded]), JobStatus::Completed);
        assert_eq!(job_status(&[Succeeded, Dead]), JobStatus::Partial);
        assert_eq!(job_status(&[Dead, Dead]), JobStatus::Failed);
    }
}
