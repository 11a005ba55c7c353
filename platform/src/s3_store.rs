//! `ObjectStore` over an S3-compatible bucket (the off-site copies), with `fetch`: each call is
//! signed by `shared::offsite::s3_request` and sent as is.

use shared::offsite::{complete_body, s3_error, s3_request, xml_text, OffsiteConfig, S3Call, S3Request};
use shared::ports::{ObjectInfo, ObjectStore, PortError, UploadedPart};
use shared::sha256::sha256_hex;
use shared::sigv4::Credentials;
use worker::js_sys::Uint8Array;
use worker::{Fetch, Headers, Method, Request, RequestInit, Response};

pub struct S3Store<'a> {
    config: &'a OffsiteConfig,
    credentials: &'a Credentials,
}

impl<'a> S3Store<'a> {
    /// The store of `config`, or why it cannot be reached (its secrets are not set).
    pub fn new(config: &'a OffsiteConfig) -> Result<S3Store<'a>, PortError> {
        Ok(S3Store { config, credentials: config.credentials()? })
    }

    async fn send(&self, what: &str, call: S3Call<'_>, body: Option<Vec<u8>>) -> Result<Response, PortError> {
        let S3Request { method, url, headers } = s3_request(self.config, self.credentials, crate::now(), &call);
        let unreachable = |e: worker::Error| PortError::unavailable(format!("off-site {what}: {} unreachable: {e}", self.config.endpoint));
        let h = Headers::new();
        for (name, value) in &headers {
            h.set(name, value).map_err(unreachable)?;
        }
        let mut init = RequestInit::new();
        init.with_method(Method::from(method.to_string())).with_headers(h);
        if let Some(bytes) = body {
            init.with_body(Some(Uint8Array::from(bytes.as_slice()).into()));
        }
        let request = Request::new_with_init(&url, &init).map_err(unreachable)?;
        Fetch::Request(request).send().await.map_err(unreachable)
    }

    /// The answer if it is a success, else the S3 error it carries, typed.
    async fn ok(&self, what: &str, mut response: Response) -> Result<Response, PortError> {
        let status = response.status_code();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(s3_error(what, status, &body))
    }

    async fn head_response(&self, key: &str) -> Result<Option<Response>, PortError> {
        let response = self.send(&format!("head of {key}"), S3Call::Head { key }, None).await?;
        if response.status_code() == 404 {
            return Ok(None);
        }
        self.ok(&format!("head of {key}"), response).await.map(Some)
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).ok().flatten()
}

impl ObjectStore for S3Store<'_> {
    async fn put(&mut self, key: &str, bytes: Vec<u8>, info: &ObjectInfo) -> Result<(), PortError> {
        let what = format!("put of {key}");
        let sha = sha256_hex(&bytes);
        let call = S3Call::Put { key, payload_sha256: &sha, content_type: &info.content_type };
        let response = self.send(&what, call, Some(bytes)).await?;
        self.ok(&what, response).await.map(drop)
    }

    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        self.get_range(key, 0, u64::MAX).await
    }

    async fn get_range(&mut self, key: &str, offset: u64, length: u64) -> Result<Option<Vec<u8>>, PortError> {
        let what = format!("read of {key}");
        let range = (offset > 0 || length != u64::MAX).then(|| (offset, offset.saturating_add(length) - 1));
        let response = self.send(&what, S3Call::Get { key, range }, None).await?;
        if response.status_code() == 404 {
            return Ok(None);
        }
        let mut response = self.ok(&what, response).await?;
        response.bytes().await.map(Some).map_err(|e| PortError::unavailable(format!("off-site {what}: {e}")))
    }

    async fn head(&mut self, key: &str) -> Result<Option<u64>, PortError> {
        Ok(self.head_with_etag(key).await?.map(|(size, _)| size))
    }

    async fn delete(&mut self, key: &str) -> Result<(), PortError> {
        let what = format!("delete of {key}");
        let response = self.send(&what, S3Call::Delete { key }, None).await?;
        self.ok(&what, response).await.map(drop)
    }

    async fn create_multipart(&mut self, key: &str, info: &ObjectInfo) -> Result<String, PortError> {
        let what = format!("multipart upload of {key}");
        let response = self.send(&what, S3Call::CreateMultipart { key, content_type: &info.content_type }, None).await?;
        let mut response = self.ok(&what, response).await?;
        let body = response.text().await.map_err(|e| PortError::unavailable(format!("off-site {what}: {e}")))?;
        xml_text(&body, "UploadId").ok_or_else(|| PortError::unavailable(format!("off-site {what}: no UploadId in {body:?}")))
    }

    async fn upload_part(&mut self, key: &str, upload_id: &str, number: u16, bytes: Vec<u8>) -> Result<String, PortError> {
        let what = format!("part {number} of {key}");
        let sha = sha256_hex(&bytes);
        let response = self.send(&what, S3Call::UploadPart { key, upload_id, number, payload_sha256: &sha }, Some(bytes)).await?;
        let response = self.ok(&what, response).await?;
        header(&response, "etag").ok_or_else(|| PortError::unavailable(format!("off-site {what}: the answer has no ETag")))
    }

    async fn complete_multipart(&mut self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), PortError> {
        let what = format!("completion of {key}");
        let body = complete_body(parts).into_bytes();
        let sha = sha256_hex(&body);
        let response = self.send(&what, S3Call::Complete { key, upload_id, payload_sha256: &sha }, Some(body)).await?;
        let mut response = self.ok(&what, response).await?;
        // S3 can answer 200 and still fail the completion, in the body.
        let text = response.text().await.unwrap_or_default();
        match xml_text(&text, "Code") {
            Some(_) => Err(s3_error(&what, 500, &text)),
            None => Ok(()),
        }
    }

    async fn abort_multipart(&mut self, key: &str, upload_id: &str) -> Result<(), PortError> {
        let what = format!("abort of the upload of {key}");
        let response = self.send(&what, S3Call::Abort { key, upload_id }, None).await?;
        if response.status_code() == 404 {
            return Ok(());
        }
        self.ok(&what, response).await.map(drop)
    }

    async fn head_with_etag(&mut self, key: &str) -> Result<Option<(u64, Option<String>)>, PortError> {
        Ok(self.head_response(key).await?.and_then(|r| Some((header(&r, "content-length")?.parse().ok()?, header(&r, "etag")))))
    }
}
