//! S3-compatible object storage through object_store's AWS client: AWS, MinIO, Ceph,
//! Wasabi, Backblaze, s3s and others, addressed as `s3://bucket/prefix`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::limit::LimitStore;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::retry::{RetryAfter, RetryPolicy};
use super::ObjectStoreBackend;
use crate::error::{Error, Result};

/// Default number of requests in flight at once.
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Default pack size on S3. A pack closes once it reaches this size, so it ends at
/// most one sealed chunk (8 MiB) and its header beyond it: under the 32 MiB multipart
/// threshold, and sent in one PUT, unless its last chunk is of the largest size.
/// 64 MiB packs took six requests each (a create, four parts, a complete), and a
/// server spends a pass over every byte assembling the parts (docs/BENCHMARKS.md).
pub const DEFAULT_S3_PACK_SIZE: u64 = 24 * 1024 * 1024;

/// Where an S3 repository is and how to reach it. `from_env` fills it the usual way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub prefix: String,
    /// `https://host:port` of a non-AWS server; AWS when `None`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Permit plain HTTP to an endpoint that is not on loopback.
    pub allow_http: bool,
    /// Use `bucket.host` addressing instead of path style (`host/bucket`).
    pub virtual_hosted: bool,
    pub connections: usize,
    /// How long failing requests are retried before the error is reported.
    pub retry_timeout: Duration,
}

/// Hands every response through, noting a `Retry-After` of a 429 or 503 answer for the
/// retry loop (object_store does not report headers with its errors); adds Content-MD5
/// to every write once the repository asks for it (Object Lock).
#[derive(Debug)]
struct RetryAfterService {
    inner: HttpClient,
    hint: Arc<RetryAfter>,
    content_md5: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl HttpService for RetryAfterService {
    async fn call(&self, mut request: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        // A bucket with Object Lock takes no write without Content-MD5 (not signed, which
        // SigV4 allows). Elsewhere the hash would only cost time: objects are
        // authenticated by their own seals.
        if self.content_md5.load(Ordering::Relaxed)
            && request.method() == http::Method::PUT
            && request.body().content_length() > 0
            && !request.headers().contains_key("content-md5")
        {
            let body = match request.body().as_bytes() {
                Some(bytes) => Some(bytes.clone()),
                None => http_body_util::BodyExt::collect(request.body().clone()).await.ok().map(|c| c.to_bytes()),
            };
            if let Some(value) = body.and_then(|b| http::HeaderValue::from_str(&super::bucket::content_md5(&b)).ok()) {
                request.headers_mut().insert("content-md5", value);
            }
        }
        let response = self.inner.execute(request).await?;
        if matches!(response.status().as_u16(), 429 | 503) {
            let header = response.headers().get("retry-after").and_then(|value| value.to_str().ok());
            if let Some(delay) = header.and_then(parse_retry_after) {
                self.hint.set(delay);
            }
        }
        Ok(response)
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value.trim()).ok()?.timestamp();
    let delay = when.duration_since(jiff::Timestamp::now());
    Some(Duration::from_secs(delay.as_secs().max(0) as u64))
}

#[derive(Debug)]
struct RetryAfterConnector {
    hint: Arc<RetryAfter>,
    content_md5: Arc<AtomicBool>,
}

impl HttpConnector for RetryAfterConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        let (hint, content_md5) = (self.hint.clone(), self.content_md5.clone());
        Ok(HttpClient::new(RetryAfterService { inner, hint, content_md5 }))
    }
}

impl S3Options {
    /// Parses `s3://bucket/prefix` and reads settings from `AWS_*` variables, falling
    /// back to the shared credentials and config files for the selected profile.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").or_else(|| url.strip_prefix("s3:")).unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidInput(format!("{url:?} names no bucket; use s3://bucket/prefix")));
        }
        let profile = super::aws_profile::Profile::load();
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let retry_seconds = env("COFFER_S3_RETRY_TIMEOUT")
            .and_then(|v| v.parse().ok())
            .unwrap_or(super::retry::DEFAULT_RETRY_BUDGET.as_secs());
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: env("AWS_ENDPOINT_URL_S3")
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .or_else(|| profile.get("endpoint_url")),
            region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).or_else(|| profile.get("region")),
            access_key_id: env("AWS_ACCESS_KEY_ID").or_else(|| profile.get("aws_access_key_id")),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY").or_else(|| profile.get("aws_secret_access_key")),
            session_token: env("AWS_SESSION_TOKEN").or_else(|| profile.get("aws_session_token")),
            allow_http: env("COFFER_S3_ALLOW_HTTP").is_some_and(|v| v == "1" || v == "true"),
            virtual_hosted: env("COFFER_S3_VIRTUAL_HOSTED").is_some_and(|v| v == "1" || v == "true"),
            connections: DEFAULT_CONNECTIONS,
            retry_timeout: Duration::from_secs(retry_seconds),
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The bucket's URL as object_store addresses it (path style unless virtual hosted).
    fn bucket_url(&self) -> String {
        let region = self.region.clone().unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = self.endpoint.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/');
        if !self.virtual_hosted {
            return format!("{endpoint}/{}", self.bucket);
        }
        match endpoint.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{}.{host}", self.bucket),
            None => format!("{endpoint}/{}", self.bucket),
        }
    }

    /// Whether requests go in plain HTTP to a host that is not loopback.
    fn plain_http_off_host(&self) -> bool {
        let Some(rest) = self.endpoint.as_deref().and_then(|e| e.strip_prefix("http://")) else { return false };
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        !loopback
    }

    /// Whether request bodies are signed (SigV4's SHA-256 of every byte, computed here
    /// and again by the server). Only where nothing else protects them in transit:
    /// plain HTTP to another host. Over TLS, or on loopback, `UNSIGNED-PAYLOAD`, as the
    /// AWS SDKs do over HTTPS: what is stored is checked end to end anyway (every blob
    /// is authenticated by AES-GCM and named by its keyed hash, every read verifies).
    fn signs_payload(&self) -> bool {
        self.plain_http_off_host()
    }

    fn check_http(&self) -> Result<()> {
        let Some(endpoint) = &self.endpoint else { return Ok(()) };
        if !self.plain_http_off_host() || self.allow_http {
            return Ok(());
        }
        Err(Error::InvalidInput(format!(
            "endpoint {endpoint} is plain HTTP to a host that is not loopback; use https, or set COFFER_S3_ALLOW_HTTP=1 if you accept sending data unencrypted in transit"
        )))
    }
}

/// Opens the S3 repository described by `options`.
pub fn open_s3(options: &S3Options) -> Result<ObjectStoreBackend> {
    options.check_http()?;
    let hint = Arc::new(RetryAfter::default());
    let content_md5 = Arc::new(AtomicBool::new(false));
    let client_options = ClientOptions::new()
        .with_allow_http(options.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")))
        .with_timeout(Duration::from_secs(120))
        .with_connect_timeout(Duration::from_secs(10));
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&options.bucket)
        .with_region(options.region.clone().unwrap_or_else(|| "us-east-1".to_string()))
        .with_virtual_hosted_style_request(options.virtual_hosted)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_unsigned_payload(!options.signs_payload())
        .with_client_options(client_options.clone())
        // Every retry is coffer's own (retry.rs): one budget for every request kind,
        // Retry-After honoured, bodies resumed, create-only writes settled.
        .with_retry(RetryConfig { backoff: BackoffConfig::default(), max_retries: 0, retry_timeout: Duration::ZERO })
        .with_http_connector(RetryAfterConnector { hint: hint.clone(), content_md5: content_md5.clone() });
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let (Some(key), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
        builder = builder.with_access_key_id(key).with_secret_access_key(secret);
    }
    if let Some(token) = &options.session_token {
        builder = builder.with_token(token);
    }
    let store =
        builder.build().map_err(|e| Error::InvalidInput(format!("cannot configure S3 for {}: {e}", options.url())))?;
    let multipart: Arc<dyn object_store::multipart::MultipartStore> = if options.prefix.is_empty() {
        Arc::new(store.clone())
    } else {
        Arc::new(PrefixStore::new(store.clone(), options.prefix.as_str()))
    };
    let bucket = super::bucket::BucketApi {
        client: RetryAfterConnector { hint: hint.clone(), content_md5: content_md5.clone() }
            .connect(&client_options)
            .map_err(|e| Error::InvalidInput(format!("cannot configure S3 for {}: {e}", options.url())))?,
        credentials: store.credentials().clone(),
        region: options.region.clone().unwrap_or_else(|| "us-east-1".to_string()),
        bucket_url: options.bucket_url(),
        prefix: if options.prefix.is_empty() { String::new() } else { format!("{}/", options.prefix) },
        multipart: multipart.clone(),
        location: options.url(),
    };
    let limited = LimitStore::new(store, options.connections.max(1));
    let store: Arc<dyn ObjectStore> = if options.prefix.is_empty() {
        Arc::new(limited)
    } else {
        Arc::new(PrefixStore::new(limited, options.prefix.as_str()))
    };
    let policy = RetryPolicy { budget: options.retry_timeout, ..RetryPolicy::default() };
    Ok(ObjectStoreBackend::new(store, options.url())?
        .with_retries(policy, hint)
        .with_connections(options.connections.max(1))
        .with_multipart(multipart)
        .with_bucket_api(bucket)
        .with_content_md5(content_md5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_endpoint(endpoint: &str) -> S3Options {
        S3Options { bucket: "b".into(), endpoint: Some(endpoint.into()), ..Default::default() }
    }

    #[test]
    fn plain_http_only_to_loopback_unless_asked() {
        assert!(with_endpoint("http://127.0.0.1:9000").check_http().is_ok());
        assert!(with_endpoint("http://localhost:9000/").check_http().is_ok());
        assert!(with_endpoint("http://[::1]:9000").check_http().is_ok());
        assert!(with_endpoint("https://s3.example.com").check_http().is_ok());
        assert!(with_endpoint("http://s3.example.com:9000").check_http().is_err());
        assert!(with_endpoint("http://s3.example.com:9000").signs_payload());
        assert!(!with_endpoint("http://127.0.0.1:9000").signs_payload());
        assert!(!with_endpoint("https://s3.example.com").signs_payload());
        assert!(!S3Options::default().signs_payload());
        let mut allowed = with_endpoint("http://10.1.2.3:9000");
        allowed.allow_http = true;
        assert!(allowed.check_http().is_ok());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        let date = jiff::fmt::rfc2822::to_string(&soon.to_zoned(jiff::tz::TimeZone::UTC)).unwrap();
        let parsed = parse_retry_after(&date).unwrap();
        assert!(parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28), "{date}: {parsed:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        let options = S3Options::from_url("s3://backups/clinic/nightly/").unwrap();
        assert_eq!((options.bucket.as_str(), options.prefix.as_str()), ("backups", "clinic/nightly"));
        assert_eq!(options.url(), "s3://backups/clinic/nightly");
        assert!(S3Options::from_url("s3:///x").is_err());
    }
}
