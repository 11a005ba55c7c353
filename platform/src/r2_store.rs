//! `ObjectStore` over an R2 bucket binding.

use shared::ports::{ObjectInfo, ObjectStore, PortError, UploadedPart};
use std::collections::HashMap;
use crate::native_streams::{self, NativeSha256};
use worker::{Bucket, HttpMetadata, Range, ResponseBody};

pub struct R2Store {
    bucket: Bucket,
    operations: R2Operations,
    /// The key whose ranged reads are hashed natively as they pass (see `digest_reads`).
    read_hash: Option<(String, NativeSha256)>,
}

/// R2 operations made through one store, by the classes R2 bills: A (writes, lists, multipart
/// steps) and B (reads, heads). Deletes and aborts are free. Logged per step, they are the
/// bench's cost model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct R2Operations {
    pub class_a: u32,
    pub class_b: u32,
}

impl R2Store {
    pub fn new(bucket: Bucket) -> R2Store {
        R2Store { bucket, operations: R2Operations::default(), read_hash: None }
    }

    pub fn operations(&self) -> R2Operations {
        self.operations
    }

    /// Once a task has ended, its staging area goes whole (see [`Self::delete_all_under`]). A
    /// failure leaves litter, never a wrong dump or archive, so it is logged only.
    pub async fn clear_staging(&mut self, prefix: &str, label: &str) {
        match self.delete_all_under(prefix).await {
            Ok(0) => {}
            Ok(n) => worker::console_log!("{label}: deleted {n} staging objects under {prefix}"),
            Err(e) => worker::console_error!("{label}: clearing {prefix} failed: {e}"),
        }
    }

    /// Deletes every object under `prefix` (a task's staging area, once the task has ended):
    /// whatever a delivery that died or lost its lease parked there goes too. Returns how many.
    pub async fn delete_all_under(&mut self, prefix: &str) -> Result<usize, PortError> {
        // A task parks one tail per step at most; 20 pages of 1,000 is far beyond any task.
        const MAX_PAGES: usize = 20;
        let mut deleted = 0;
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut list = self.bucket.list().prefix(prefix);
            if let Some(c) = cursor.take() {
                list = list.cursor(c);
            }
            self.operations.class_a += 1;
            let page = list.execute().await.map_err(|e| r2_error("listing", prefix, e))?;
            for object in page.objects() {
                self.delete(&object.key()).await?;
                deleted += 1;
            }
            match (page.truncated(), page.cursor()) {
                (true, Some(next)) => cursor = Some(next),
                _ => break,
            }
        }
        Ok(deleted)
    }
}

fn r2_error(what: &str, key: &str, e: worker::Error) -> PortError {
    PortError::unavailable(format!("R2 {what} of {key} failed: {e}"))
}

fn http_metadata(info: &ObjectInfo) -> HttpMetadata {
    HttpMetadata { content_type: Some(info.content_type.clone()), ..Default::default() }
}

fn custom_metadata(info: &ObjectInfo) -> HashMap<String, String> {
    info.custom.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The raw digest of a lowercase hex SHA-256.
fn sha256_bytes(hex: &str) -> Option<Vec<u8>> {
    (hex.len() == 64)
        .then(|| (0..64).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect())
        .flatten()
}

impl ObjectStore for R2Store {
    async fn gzip_member(&mut self, plain: &[u8]) -> Result<Vec<u8>, PortError> {
        native_streams::gzip_member(plain).await
    }

    fn digest_reads(&mut self, key: &str) -> bool {
        match NativeSha256::new() {
            Ok(hash) => {
                self.read_hash = Some((key.to_owned(), hash));
                true
            }
            Err(e) => {
                worker::console_error!("hashing natively is unavailable ({e}); hashing in WebAssembly");
                false
            }
        }
    }

    async fn read_digest(&mut self) -> Result<String, PortError> {
        let (_, hash) = self.read_hash.take().ok_or_else(|| PortError::unavailable("no reads are being hashed".to_owned()))?;
        hash.finish().await
    }

    async fn sha256(&mut self, key: &str) -> Result<Option<(u64, String)>, PortError> {
        self.operations.class_b += 1;
        let Some(object) = self.bucket.get(key).execute().await.map_err(|e| r2_error("get", key, e))? else {
            return Ok(None);
        };
        let size = object.size();
        let digest = match object.body().map(|body| body.response_body()) {
            Some(Ok(ResponseBody::Stream(stream))) => native_streams::sha256_of_stream(&stream).await?,
            Some(Ok(ResponseBody::Body(bytes))) => shared::sha256::sha256_hex(&bytes),
            Some(Ok(ResponseBody::Empty)) | None if size == 0 => shared::sha256::sha256_hex(&[]),
            Some(Ok(ResponseBody::Empty)) | None => return Err(PortError::unavailable(format!("{key}: R2 returned no body"))),
            Some(Err(e)) => return Err(r2_error("reading", key, e)),
        };
        Ok(Some((size, digest)))
    }

    async fn put(&mut self, key: &str, bytes: Vec<u8>, info: &ObjectInfo) -> Result<(), PortError> {
        self.operations.class_a += 1;
        let mut put = self
            .bucket
            .put(key, bytes)
            .http_metadata(http_metadata(info))
            .custom_metadata(custom_metadata(info));
        // When the checksum is known, R2 verifies the body against it and refuses a mismatch.
        if let Some(digest) = info.custom.get("sha256").and_then(|h| sha256_bytes(h)) {
            put = put.sha256(digest);
        }
        put.execute().await.map_err(|e| r2_error("put", key, e))?;
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        self.operations.class_b += 1;
        let object = self.bucket.get(key).execute().await.map_err(|e| r2_error("get", key, e))?;
        match object.as_ref().and_then(|o| o.body()) {
            Some(body) => Ok(Some(body.bytes().await.map_err(|e| r2_error("reading", key, e))?)),
            None => Ok(None),
        }
    }

    async fn get_range(&mut self, key: &str, offset: u64, length: u64) -> Result<Option<Vec<u8>>, PortError> {
        if length == 0 {
            return Ok(self.head(key).await?.map(|_| Vec::new()));
        }
        self.operations.class_b += 1;
        let object = self
            .bucket
            .get(key)
            .range(Range::OffsetWithLength { offset, length })
            .execute()
            .await
            .map_err(|e| r2_error("ranged get", key, e))?;
        let Some(body) = object.as_ref().and_then(|o| o.body()) else { return Ok(None) };
        match &self.read_hash {
            Some((hashed, hash)) if hashed == key => {
                let ResponseBody::Stream(stream) = body.response_body().map_err(|e| r2_error("reading", key, e))? else {
                    return Err(PortError::unavailable(format!("R2 returned no stream for {key}")));
                };
                let bytes = native_streams::collect(&stream).await?;
                let copy = bytes.to_vec();
                hash.update(&bytes).await?;
                Ok(Some(copy))
            }
            _ => Ok(Some(body.bytes().await.map_err(|e| r2_error("reading", key, e))?)),
        }
    }

    async fn head(&mut self, key: &str) -> Result<Option<u64>, PortError> {
        self.operations.class_b += 1;
        let object = self.bucket.head(key).await.map_err(|e| r2_error("head", key, e))?;
        Ok(object.map(|o| o.size()))
    }

    async fn delete(&mut self, key: &str) -> Result<(), PortError> {
        self.bucket.delete(key).await.map_err(|e| r2_error("delete", key, e))
    }

    async fn create_multipart(&mut self, key: &str, info: &ObjectInfo) -> Result<String, PortError> {
        self.operations.class_a += 1;
        let upload = self
            .bucket
            .create_multipart_upload(key)
            .http_metadata(http_metadata(info))
            .custom_metadata(custom_metadata(info))
            .execute()
            .await
            .map_err(|e| r2_error("creating a multipart upload", key, e))?;
        Ok(upload.upload_id().await)
    }

    async fn upload_part(&mut self, key: &str, upload_id: &str, number: u16, bytes: Vec<u8>) -> Result<String, PortError> {
        self.operations.class_a += 1;
        let upload = self
            .bucket
            .resume_multipart_upload(key, upload_id)
            .map_err(|e| r2_error("resuming the multipart upload", key, e))?;
        let part = upload
            .upload_part(number, bytes)
            .await
            .map_err(|e| r2_error(&format!("uploading part {number}"), key, e))?;
        Ok(part.etag())
    }

    async fn complete_multipart(&mut self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), PortError> {
        self.operations.class_a += 1;
        let upload = self
            .bucket
            .resume_multipart_upload(key, upload_id)
            .map_err(|e| r2_error("resuming the multipart upload", key, e))?;
        let parts: Vec<worker::UploadedPart> = parts.iter().map(|p| worker::UploadedPart::new(p.number, p.etag.clone())).collect();
        upload.complete(parts).await.map_err(|e| r2_error("completing the multipart upload", key, e))?;
        Ok(())
    }

    async fn abort_multipart(&mut self, key: &str, upload_id: &str) -> Result<(), PortError> {
        let upload = self
            .bucket
            .resume_multipart_upload(key, upload_id)
            .map_err(|e| r2_error("resuming the multipart upload", key, e))?;
        upload.abort().await.map_err(|e| r2_error("aborting the multipart upload", key, e))
    }
}
