//! The runtime's native byte streams, where they beat code compiled to WebAssembly.
//!
//! gzip through `CompressionStream("gzip")` (zlib, level 6 by default,
//! the level `gzip` and `tar czf` use): several times faster than deflate compiled to
//! WebAssembly, which every stored byte of a compressed dump and every byte of a weekly archive
//! went through. One call compresses one bounded piece into one whole gzip member, so nothing of
//! the compressor outlives the call (see `shared::upload`).

use shared::ports::PortError;
use wasm_bindgen::prelude::*;
use worker::js_sys::Uint8Array;
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{ReadableStream, ReadableWritablePair, Response, WritableStream, WritableStreamDefaultWriter};

#[wasm_bindgen]
extern "C" {
    /// The runtime's `CompressionStream` (web-sys has it only behind its unstable-API flag).
    type CompressionStream;

    #[wasm_bindgen(constructor, catch)]
    fn new(format: &str) -> Result<CompressionStream, JsValue>;

    /// Workers' `crypto.DigestStream`: a writable stream whose `digest` is the hash of
    /// everything written to it.
    #[wasm_bindgen(js_namespace = crypto)]
    type DigestStream;

    #[wasm_bindgen(constructor, catch, js_namespace = crypto)]
    fn new(algorithm: &str) -> Result<DigestStream, JsValue>;

    #[wasm_bindgen(method, getter)]
    fn digest(this: &DigestStream) -> worker::js_sys::Promise;
}

fn js_error(what: &str, e: JsValue) -> PortError {
    PortError::unavailable(format!("{what}: {}", e.as_string().unwrap_or_else(|| format!("{e:?}"))))
}

/// `plain` as one whole gzip member.
pub async fn gzip_member(plain: &[u8]) -> Result<Vec<u8>, PortError> {
    // A copy in JavaScript's memory: a view into WebAssembly's would move if it grew meanwhile.
    let input = Response::new_with_opt_buffer_source(Some(&Uint8Array::from(plain))).map_err(|e| js_error("gzip input", e))?;
    let body = input.body().ok_or_else(|| PortError::unavailable("gzip: the input has no body stream".to_owned()))?;
    let compressor = CompressionStream::new("gzip").map_err(|e| js_error("CompressionStream", e))?;
    // A CompressionStream is a readable/writable pair, which is all pipeThrough asks for.
    let compressed = body.pipe_through(compressor.unchecked_ref::<ReadableWritablePair>());
    Ok(collect(&compressed).await?.to_vec())
}

/// A finished DigestStream's digest as lowercase hex.
async fn hex_digest(digest: &DigestStream) -> Result<String, PortError> {
    let raw = JsFuture::from(digest.digest()).await.map_err(|e| js_error("the SHA-256 digest", e))?;
    Ok(shared::sha256::hex(&Uint8Array::new(&raw).to_vec()))
}

/// The SHA-256 (lowercase hex) of everything `body` holds, hashed by `crypto.DigestStream` as
/// the stream flows: the bytes never enter WebAssembly's memory.
pub async fn sha256_of_stream(body: &ReadableStream) -> Result<String, PortError> {
    let digest = DigestStream::new("SHA-256").map_err(|e| js_error("DigestStream", e))?;
    JsFuture::from(body.pipe_to(digest.unchecked_ref::<WritableStream>())).await.map_err(|e| js_error("SHA-256", e))?;
    hex_digest(&digest).await
}

/// A SHA-256 fed piece by piece from bytes already in JavaScript, by `crypto.DigestStream`.
pub struct NativeSha256 {
    digest: DigestStream,
    writer: WritableStreamDefaultWriter,
}

impl NativeSha256 {
    pub fn new() -> Result<NativeSha256, PortError> {
        let digest = DigestStream::new("SHA-256").map_err(|e| js_error("DigestStream", e))?;
        let writer = digest.unchecked_ref::<WritableStream>().get_writer().map_err(|e| js_error("getWriter", e))?;
        Ok(NativeSha256 { digest, writer })
    }

    pub async fn update(&self, bytes: &Uint8Array) -> Result<(), PortError> {
        JsFuture::from(self.writer.write_with_chunk(bytes)).await.map_err(|e| js_error("SHA-256", e))?;
        Ok(())
    }

    /// The digest as lowercase hex.
    pub async fn finish(self) -> Result<String, PortError> {
        JsFuture::from(self.writer.close()).await.map_err(|e| js_error("closing the SHA-256", e))?;
        hex_digest(&self.digest).await
    }
}

/// Everything `body` holds, as bytes in JavaScript.
pub async fn collect(body: &ReadableStream) -> Result<Uint8Array, PortError> {
    let response = Response::new_with_opt_readable_stream(Some(body)).map_err(|e| js_error("reading a stream", e))?;
    let buffer = JsFuture::from(response.array_buffer().map_err(|e| js_error("reading a stream", e))?)
        .await
        .map_err(|e| js_error("reading a stream", e))?;
    Ok(Uint8Array::new(&buffer))
}
