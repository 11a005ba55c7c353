//! `ByteSink` that streams into an R2 multipart upload.
//!
//! Bytes are cut into parts of exactly [`PART_SIZE`] (R2 wants every part but the last to be
//! the same size), so memory holds at most one part whatever the dump's size. Nothing is
//! visible at the key until [`MultipartSink::complete`] succeeds: an export that fails midway
//! leaves no object behind, and [`MultipartSink::abort`] frees its parts.

use shared::ports::{ByteSink, PortError};
use worker::{Bucket, MultipartUpload, UploadedPart};

/// 5 MiB, R2's minimum part size.
pub const PART_SIZE: usize = 5 * 1024 * 1024;

pub struct MultipartSink {
    upload: MultipartUpload,
    buffer: Vec<u8>,
    parts: Vec<UploadedPart>,
}

fn r2_error(what: &str, e: worker::Error) -> PortError {
    PortError(format!("R2 {what} failed: {e}"))
}

impl MultipartSink {
    pub async fn create(bucket: &Bucket, key: &str) -> Result<MultipartSink, PortError> {
        let upload = bucket
            .create_multipart_upload(key)
            .execute()
            .await
            .map_err(|e| r2_error("creating a multipart upload", e))?;
        Ok(MultipartSink { upload, buffer: Vec::with_capacity(PART_SIZE), parts: Vec::new() })
    }

    async fn upload_part(&mut self, bytes: Vec<u8>) -> Result<(), PortError> {
        let number = u16::try_from(self.parts.len() + 1)
            .map_err(|_| PortError("dump exceeds R2's 10,000 parts".into()))?;
        let part = self
            .upload
            .upload_part(number, bytes)
            .await
            .map_err(|e| r2_error(&format!("uploading part {number}"), e))?;
        self.parts.push(part);
        Ok(())
    }

    /// Uploads what is buffered as the last part and makes the object visible.
    pub async fn complete(mut self) -> Result<(), PortError> {
        let last = std::mem::take(&mut self.buffer);
        if !last.is_empty() || self.parts.is_empty() {
            self.upload_part(last).await?;
        }
        self.upload
            .complete(self.parts)
            .await
            .map_err(|e| r2_error("completing the multipart upload", e))?;
        Ok(())
    }

    /// Discards the upload and its parts.
    pub async fn abort(self) -> Result<(), PortError> {
        self.upload.abort().await.map_err(|e| r2_error("aborting the multipart upload", e))
    }
}

impl ByteSink for MultipartSink {
    async fn write(&mut self, mut bytes: &[u8]) -> Result<(), PortError> {
        while !bytes.is_empty() {
            let room = PART_SIZE - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == PART_SIZE {
                let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_SIZE));
                self.upload_part(part).await?;
            }
        }
        Ok(())
    }
}
