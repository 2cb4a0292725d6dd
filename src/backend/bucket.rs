//! Bucket-level S3 requests object_store does not offer, signed with its SigV4
//! authorizer: listing and aborting unfinished multipart uploads (older than a day, so
//! parts a crash or an outage left behind stop costing storage; prune does this under
//! its exclusive lock), and reading and setting the bucket's Object Lock default
//! retention (`init --object-lock`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use md5::Digest;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
use object_store::multipart::MultipartStore;
use object_store::path::Path as StorePath;

use super::{ObjectLock, ObjectLockMode};
use crate::error::{Error, Result};

/// One unfinished upload: its key below the repository prefix, id and start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upload {
    pub key: String,
    pub id: String,
    pub initiated: String,
}

/// What is needed for requests on the repository's bucket.
pub(super) struct BucketApi {
    pub client: HttpClient,
    pub credentials: AwsCredentialProvider,
    pub region: String,
    /// The bucket's URL, path style (`http://host:port/bucket`) or virtual hosted.
    pub bucket_url: String,
    /// The repository prefix in the bucket, with a trailing `/`, or empty.
    pub prefix: String,
    /// Aborts through the repository's prefix.
    pub multipart: Arc<dyn MultipartStore>,
    pub location: String,
}

impl std::fmt::Debug for BucketApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketApi({})", self.location)
    }
}

/// The base64 MD5 of a request body, for `Content-MD5`: S3 checks it on arrival, and
/// requires it (or a checksum) for every write to a bucket with Object Lock.
pub(super) fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

impl BucketApi {
    /// Aborts the uploads started more than `age` ago; returns how many.
    pub async fn abort_older_than(&self, age: Duration) -> Result<usize> {
        let cutoff = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(age.as_secs() as i64);
        let mut aborted = 0;
        for upload in self.list().await? {
            if !started_before(&upload, cutoff) {
                continue;
            }
            let Some(key) = upload.key.strip_prefix(&self.prefix) else { continue };
            let path = StorePath::from(key);
            self.multipart.abort_multipart(&path, &upload.id).await.map_err(|e| self.failure(e.to_string()))?;
            aborted += 1;
        }
        Ok(aborted)
    }

    /// Every unfinished upload below the prefix, following the pages of the listing.
    async fn list(&self) -> Result<Vec<Upload>> {
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!("prefix={}&uploads=", encode(&self.prefix));
            if let Some((key, id)) = &markers {
                query = format!("key-marker={}&{query}&upload-id-marker={}", encode(key), encode(id));
            }
            let (status, body) = self.request("GET", &format!("{}?{query}", self.bucket_url), None).await?;
            if status != 200 {
                return Err(self.answered("listing unfinished uploads", status, &body));
            }
            let (page, next) = parse_listing(&body);
            uploads.extend(page);
            match next {
                Some(next) => markers = Some(next),
                None => return Ok(uploads),
            }
        }
    }

    /// The bucket's Object Lock state (GetObjectLockConfiguration).
    pub async fn object_lock(&self) -> Result<ObjectLock> {
        let (status, body) = self.request("GET", &format!("{}?object-lock=", self.bucket_url), None).await?;
        match status {
            200 if elements(&body, "ObjectLockEnabled").first().is_some_and(|v| v.trim() == "Enabled") => {
                let mode = elements(&body, "Mode").first().and_then(|mode| ObjectLockMode::parse(mode.trim()));
                let number =
                    |name: &str| elements(&body, name).first().and_then(|n| n.trim().parse::<u32>().ok()).unwrap_or(0);
                // A rule gives Days or Years (some servers send both, one of them 0).
                let days = number("Days").saturating_add(number("Years").saturating_mul(365));
                Ok(match mode {
                    Some(mode) if days > 0 => ObjectLock::Enabled(Some((mode, days))),
                    _ => ObjectLock::Enabled(None),
                })
            }
            200 => Ok(ObjectLock::Disabled),
            404 if body.contains("ObjectLockConfigurationNotFound") => Ok(ObjectLock::Disabled),
            400 | 404 | 405 | 501 => Ok(ObjectLock::Unsupported),
            _ => Err(self.answered("reading the bucket's Object Lock configuration", status, &body)),
        }
    }

    /// Sets the bucket's default retention: every object written from now on is locked
    /// for `days` in `mode` (PutObjectLockConfiguration).
    pub async fn set_default_retention(&self, mode: ObjectLockMode, days: u32) -> Result<()> {
        let xml = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{}</Mode>\
             <Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>",
            mode.as_s3()
        );
        let url = format!("{}?object-lock=", self.bucket_url);
        let (status, body) = self.request("PUT", &url, Some(Bytes::from(xml))).await?;
        if status != 200 {
            return Err(self.answered("setting the bucket's Object Lock retention", status, &body));
        }
        Ok(())
    }

    /// Deletes one object with DeleteObject. (object_store sends every delete as a
    /// DeleteObjects batch, which needs Content-MD5 on some servers and is authorised
    /// against the bucket rather than the key on others; a policy that allows deleting
    /// only `locks/` must meet the same request everywhere.) A missing object is fine.
    pub async fn delete_object(&self, key: &str) -> Result<()> {
        let path: String = key.split('/').map(encode).collect::<Vec<_>>().join("/");
        let url =
            format!("{}/{}{path}", self.bucket_url, self.prefix.split('/').map(encode).collect::<Vec<_>>().join("/"));
        let (status, body) = self.request("DELETE", &url, None).await?;
        match status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.answered(&format!("deleting {key}"), status, &body)),
        }
    }

    /// Sends one signed request; returns the status and the body as text. A failure to
    /// get an answer is transient (retried by the caller's policy).
    async fn request(&self, method: &str, url: &str, body: Option<Bytes>) -> Result<(u16, String)> {
        let credential = self.credentials.get_credential().await.map_err(|e| self.failure(e.to_string()))?;
        let mut builder = http::Request::builder().method(method).uri(url);
        if let Some(body) = &body {
            builder = builder.header("content-md5", content_md5(body));
        }
        let mut request: HttpRequest = builder
            .body(body.map_or_else(HttpRequestBody::empty, HttpRequestBody::from))
            .map_err(|e| self.failure(e.to_string()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| self.failure(e.to_string()))?;
        let unreachable = |e: String| Error::Unreachable { location: self.location.clone(), message: e };
        let response = self.client.execute(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response.into_body().bytes().await.map_err(|e| unreachable(e.to_string()))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The error for an unexpected answer: denied, a server in trouble (retried), or other.
    fn answered(&self, what: &str, status: u16, body: &str) -> Error {
        let code = elements(body, "Code").first().map(|code| code.to_string()).unwrap_or_default();
        let message = format!("{what} was answered {status} {code}");
        match status {
            403 => Error::AccessDenied { location: self.location.clone(), message },
            // A server that does not implement the request (s3s-fs and ListMultipartUploads)
            // will not next time either: not retried for minutes.
            501 => self.failure(message),
            429 | 500.. => Error::Unreachable { location: self.location.clone(), message },
            _ => self.failure(message),
        }
    }

    fn failure(&self, message: String) -> Error {
        Error::Backend { location: self.location.clone(), message }
    }
}

/// True if the upload started before `cutoff`; an unreadable time counts as old.
fn started_before(upload: &Upload, cutoff: jiff::Timestamp) -> bool {
    upload.initiated.parse::<jiff::Timestamp>().map_or(true, |started| started < cutoff)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(value: &str) -> String {
    let mut encoded = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The uploads of one page of ListMultipartUploadsResult, and the markers of the next
/// page when it is truncated.
fn parse_listing(xml: &str) -> (Vec<Upload>, Option<(String, String)>) {
    let uploads = elements(xml, "Upload")
        .into_iter()
        .filter_map(|upload| {
            Some(Upload {
                key: unescape(elements(upload, "Key").first()?),
                id: unescape(elements(upload, "UploadId").first()?),
                initiated: elements(upload, "Initiated").first().map(|t| unescape(t)).unwrap_or_default(),
            })
        })
        .collect();
    let truncated = elements(xml, "IsTruncated").first().is_some_and(|value| value.trim() == "true");
    let next = truncated
        .then(|| {
            let key = unescape(elements(xml, "NextKeyMarker").first()?);
            let id = unescape(elements(xml, "NextUploadIdMarker").first()?);
            Some((key, id))
        })
        .flatten();
    (uploads, next)
}

/// The contents of every `<name>...</name>` element, in order (no nesting of the same name).
fn elements<'x>(xml: &'x str, name: &str) -> Vec<&'x str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_with_their_next_page() {
        let xml = "<?xml version=\"1.0\"?><ListMultipartUploadsResult><Bucket>b</Bucket>\
            <IsTruncated>true</IsTruncated><NextKeyMarker>p/data/ab/c</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>\
            <Upload><Key>p/data/aa/b</Key><UploadId>u1</UploadId><Initiated>2026-01-01T00:00:00.000Z</Initiated></Upload>\
            <Upload><Key>p/a&amp;b</Key><UploadId>u2</UploadId><Initiated>2026-01-02T00:00:00Z</Initiated></Upload>\
            </ListMultipartUploadsResult>";
        let (uploads, next) = parse_listing(xml);
        assert_eq!(uploads.len(), 2);
        assert_eq!(uploads[1].key, "p/a&b");
        assert_eq!(next, Some(("p/data/ab/c".into(), "u2".into())));
        let (none, last) =
            parse_listing("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>");
        assert!(none.is_empty() && last.is_none());
        assert_eq!(encode("p/x y"), "p%2Fx%20y");
        let cutoff: jiff::Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        assert!(started_before(&uploads[0], cutoff));
        assert!(!started_before(&uploads[1], cutoff));
    }
}
