//! The stand-in server: listeners, request log, faults, interceptor and the public handle.
//!
//! THIS IS A TEST STAND-IN, not Elasticsearch, Kibana or GitHub. Every response carries the
//! header `X-Standin: dga-standin`.

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::util;

/// Which imitated service a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Service {
    Es,
    Kibana,
    GitHub,
}

/// Credentials the stand-in accepts (for both Elasticsearch and Kibana). When all three lists are
/// empty, no authentication is required.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Auth {
    /// (user, password) pairs for `Authorization: Basic ...`.
    pub basic: Vec<(String, String)>,
    /// Encoded API keys: the base64 `id:key` value sent as `Authorization: ApiKey <value>`.
    pub api_keys: Vec<String>,
    /// Tokens accepted as `Authorization: Bearer <token>`.
    pub bearer: Vec<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            basic: vec![("elastic".into(), "changeme".into())],
            api_keys: vec![],
            bearer: vec![],
        }
    }
}

/// Stand-in configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandinConfig {
    pub license_type: String,
    pub es_version: String,
    pub cluster_uuid: String,
    pub auth: Auth,
    pub kibana_version: String,
    /// Whether Kibana's `security_detection_engine` package (Elastic's prebuilt rules) is
    /// installed; Elastic's DGA rules are in it from 8.9 (`prebuilt.rs`). Off: an air-gapped
    /// Kibana without the package.
    #[serde(default)]
    pub kibana_prebuilt_dga: bool,
    /// `dga` package versions the stand-in's package registry holds (`dga-2.3.7` or `2.3.7`);
    /// Kibana's Fleet installs from it (`fleet.rs`, `fleet_package.rs`).
    #[serde(default)]
    pub fleet_packages: Vec<String>,
}

impl StandinConfig {
    /// The version profile `es_version` selects (see [`crate::profile`]); a version the stand-in
    /// cannot parse falls back to the default profile (the binary refuses it at start).
    pub fn es_profile(&self) -> crate::profile::Profile {
        crate::profile::Profile::parse(&self.es_version).unwrap_or_else(|_| {
            crate::profile::Profile::parse(crate::profile::DEFAULT).expect("default profile")
        })
    }
}

impl Default for StandinConfig {
    fn default() -> Self {
        StandinConfig {
            license_type: "platinum".into(),
            es_version: "8.17.0".into(),
            cluster_uuid: "dga-standin-cluster-uuid-0000000001".into(),
            auth: Auth::default(),
            kibana_version: "8.17.0".into(),
            kibana_prebuilt_dga: false,
            fleet_packages: vec![],
        }
    }
}

/// One request received by the stand-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub seq: u64,
    pub service: Service,
    pub method: String,
    pub path: String,
    pub query: String,
    /// Status answered; 0 when the connection was dropped without an answer.
    pub status: u16,
    /// Why the request did not match the spec (None when it did).
    pub off_spec: Option<String>,
    /// Spec endpoint name (`ml.put_trained_model`) or Kibana operationId (`CreateRule`).
    pub api: Option<String>,
    pub body_len: usize,
    /// Description of the injected fault, if one was applied.
    #[serde(default)]
    pub fault: Option<String>,
    /// Who authenticated, without secrets: the Basic user, `api_key:<id>` for an ApiKey, `bearer`
    /// for a token; None when no (decodable) `Authorization` header was sent.
    #[serde(default)]
    pub principal: Option<String>,
}

impl RequestRecord {
    /// True for requests that may change state: not GET/HEAD, and not a read-only POST
    /// (`_simulate`, `_find`, `_search`, `_stats`, `_infer`, `_explain`, `_validate`).
    pub fn is_write(&self) -> bool {
        if self.method == "GET" || self.method == "HEAD" {
            return false;
        }
        if self.method == "POST" {
            let last = self
                .path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            if matches!(
                last,
                "_simulate"
                    | "_find"
                    | "_search"
                    | "_stats"
                    | "_infer"
                    | "_explain"
                    | "_validate"
                    | "_preview"
                    | "_review"
            ) {
                return false;
            }
        }
        true
    }
}

/// What a fault does to a matching request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FaultAction {
    /// Answer with this status (and optional `Retry-After` and body) instead of handling.
    Status {
        code: u16,
        #[serde(default)]
        retry_after: Option<u32>,
        #[serde(default)]
        body: Option<String>,
    },
    /// Wait, then handle normally.
    Delay(Duration),
    /// Handle normally, send the headers and part of the body, then drop the connection.
    CutBody,
    /// Handle normally, send the headers and half the body, then send nothing more while
    /// keeping the connection open (a host that stalls mid-download).
    StallBody,
    /// Drop the connection without answering.
    Close,
}

/// A fault injected into matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub service: Option<Service>,
    /// Exact method (e.g. "PUT"); None = any.
    #[serde(default)]
    pub method: Option<String>,
    /// Regex matched against the request path (without query).
    pub path_regex: String,
    /// 1 = first matching request.
    #[serde(default = "one")]
    pub nth: u32,
    /// How many consecutive matching requests from `nth` get the fault.
    #[serde(default = "one")]
    pub times: u32,
    pub action: FaultAction,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// A fault on the first request whose path matches `path_regex`.
    pub fn new(path_regex: &str, action: FaultAction) -> Self {
        Fault {
            service: None,
            method: None,
            path_regex: path_regex.into(),
            nth: 1,
            times: 1,
            action,
        }
    }
}

/// Pause hook: awaited before each request is handled.
pub type Interceptor = Arc<dyn Fn(RequestRecord) -> BoxFuture<'static, ()> + Send + Sync>;

/// Where an asset's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum AssetSource {
    Bytes(Bytes),
    File(PathBuf, u64),
}

impl AssetSource {
    pub fn len(&self) -> u64 {
        match self {
            AssetSource::Bytes(b) => b.len() as u64,
            AssetSource::File(_, n) => *n,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Asset {
    pub id: u64,
    pub name: String,
    pub source: AssetSource,
}

#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub id: u64,
    pub assets: Vec<Asset>,
}

/// A stored trained model.
#[derive(Debug, Clone)]
pub(crate) struct StoredModel {
    pub config: Value,
    /// Definition JSON text (decompressed when it was uploaded compressed).
    pub definition: Option<Arc<str>>,
    /// Parsed definition, cached on first simulate.
    pub parsed: Option<Arc<Value>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub config: Value,
    pub state: String,
}

/// All in-memory state.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub license_type: String,
    pub models: BTreeMap<String, StoredModel>,
    pub pipelines: BTreeMap<String, Value>,
    pub scripts: BTreeMap<String, Value>,
    pub rules: BTreeMap<String, Vec<Value>>,
    pub index_settings: BTreeMap<String, Value>,
    pub index_templates: BTreeMap<String, Value>,
    pub legacy_templates: BTreeMap<String, Value>,
    pub data_streams: BTreeMap<String, Value>,
    /// Reserved state: (handler, key) -> the reserved-state namespace that owns it
    /// (`file_settings`), as file-based settings (ECK's StackConfigPolicy) leave it.
    pub reserved: BTreeMap<(String, String), String>,
    /// Kibana's `server.basePath` with `server.rewriteBasePath: true`, when set.
    pub kibana_base_path: Option<String>,
    pub jobs: BTreeMap<String, Job>,
    pub datafeeds: BTreeMap<String, Job>,
    /// Kibana Fleet packages, their saved objects and the registry (`fleet.rs`).
    pub fleet: crate::fleet::FleetState,
    pub releases: BTreeMap<(String, String), Release>,
    pub mirror: BTreeMap<String, AssetSource>,
    pub next_id: u64,
}

struct FaultSlot {
    fault: Fault,
    re: Regex,
    seen: u32,
}

pub(crate) struct Shared {
    pub cfg: StandinConfig,
    pub state: Mutex<State>,
    log: Mutex<Vec<RequestRecord>>,
    seq: AtomicU64,
    faults: Mutex<Vec<FaultSlot>>,
    interceptor: Mutex<Option<Interceptor>>,
    es_down: AtomicBool,
    kibana_down: AtomicBool,
    /// Kibana is starting (`kibana_fields::not_ready`): 0 ready, n > 0 for the next n Kibana
    /// requests, -1 until [`Standin::kibana_ready`].
    kibana_not_ready: AtomicI64,
    closed: AtomicBool,
    /// Elasticsearch's `http.max_content_length` in bytes (default 100mb).
    http_max_content_length: AtomicU64,
    pub github_url: OnceLock<String>,
}

/// A parsed request handed to the service handlers.
pub(crate) struct Req {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.param(k), Some("") | Some("true"))
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
}

pub(crate) enum RespBody {
    Bytes(Bytes),
    Source(AssetSource),
}

/// A handler's answer.
pub(crate) struct Resp {
    pub status: u16,
    pub body: RespBody,
    pub headers: Vec<(String, String)>,
    pub off_spec: Option<String>,
    pub api: Option<String>,
}

impl Resp {
    pub fn json(status: u16, v: &Value) -> Resp {
        Resp {
            status,
            body: RespBody::Bytes(Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
            headers: vec![("content-type".into(), "application/json".into())],
            off_spec: None,
            api: None,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn api(mut self, a: &str) -> Resp {
        self.api = Some(a.into());
        self
    }
}

type Body = BoxBody<Bytes, io::Error>;

impl Shared {
    fn new(cfg: StandinConfig) -> Shared {
        let state = State {
            license_type: cfg.license_type.clone(),
            ..Default::default()
        };
        Shared {
            cfg,
            state: Mutex::new(state),
            log: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            interceptor: Mutex::new(None),
            es_down: AtomicBool::new(false),
            kibana_down: AtomicBool::new(false),
            kibana_not_ready: AtomicI64::new(0),
            closed: AtomicBool::new(false),
            http_max_content_length: AtomicU64::new(DEFAULT_HTTP_MAX_CONTENT_LENGTH),
            github_url: OnceLock::new(),
        }
    }

    pub fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this Kibana request meets a starting Kibana (and counts it).
    pub(crate) fn kibana_starting(&self) -> bool {
        self.kibana_not_ready
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                n if n > 0 => Some(n - 1),
                n => Some(n),
            })
            .is_ok()
    }

    fn is_down(&self, svc: Service) -> bool {
        self.closed.load(Ordering::SeqCst)
            || match svc {
                Service::Es => self.es_down.load(Ordering::SeqCst),
                Service::Kibana => self.kibana_down.load(Ordering::SeqCst),
                Service::GitHub => false,
            }
    }

    fn match_fault(&self, rec: &RequestRecord) -> Option<FaultAction> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let mut hit = None;
        for slot in faults.iter_mut() {
            let f = &slot.fault;
            if f.service.is_some_and(|s| s != rec.service) {
                continue;
            }
            if f.method
                .as_ref()
                .is_some_and(|m| !m.eq_ignore_ascii_case(&rec.method))
            {
                continue;
            }
            if !slot.re.is_match(&rec.path) {
                continue;
            }
            slot.seen += 1;
            if hit.is_none()
                && slot.seen >= f.nth
                && slot.seen < f.nth.saturating_add(f.times.max(1))
            {
                hit = Some(f.action.clone());
            }
        }
        hit
    }

    fn record(&self, rec: RequestRecord) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    }

    pub fn next_id(&self) -> u64 {
        let mut st = self.st();
        st.next_id += 1;
        st.next_id
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// Stream an asset, optionally failing after `limit` bytes (for CutBody).
fn source_body(src: AssetSource, limit: Option<u64>) -> Body {
    match src {
        AssetSource::Bytes(b) => match limit {
            None => full(b),
            Some(n) => {
                let part = b.slice(0..(n as usize).min(b.len()));
                // Let hyper flush the headers and the partial body before the connection drops.
                let s = futures::stream::unfold(0u8, move |step| {
                    let part = part.clone();
                    async move {
                        match step {
                            0 => Some((Ok(Frame::data(part)), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                Some((
                                    Err(io::Error::new(
                                        io::ErrorKind::ConnectionAborted,
                                        "stand-in fault: body cut",
                                    )),
                                    2,
                                ))
                            }
                            _ => None,
                        }
                    }
                });
                BodyExt::boxed(StreamBody::new(s))
            }
        },
        AssetSource::File(path, _) => {
            use tokio::io::AsyncReadExt;
            let st = (None::<tokio::fs::File>, path, 0u64, false);
            let s = futures::stream::unfold(st, move |(file, path, sent, done)| async move {
                if done {
                    return None;
                }
                let mut file = match file {
                    Some(f) => f,
                    None => match tokio::fs::File::open(&path).await {
                        Ok(f) => f,
                        Err(e) => return Some((Err(e), (None, path, sent, true))),
                    },
                };
                if let Some(n) = limit
                    && sent >= n
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let e = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "stand-in fault: body cut",
                    );
                    return Some((Err(e), (None, path, sent, true)));
                }
                let mut buf = vec![0u8; 256 * 1024];
                let want = match limit {
                    Some(n) => ((n - sent) as usize).min(buf.len()),
                    None => buf.len(),
                };
                match file.read(&mut buf[..want]).await {
                    Ok(0) => None,
                    Ok(k) => {
                        buf.truncate(k);
                        Some((
                            Ok(Frame::data(Bytes::from(buf))),
                            (Some(file), path, sent + k as u64, false),
                        ))
                    }
                    Err(e) => Some((Err(e), (None, path, sent, true))),
                }
            });
            BodyExt::boxed(StreamBody::new(s))
        }
    }
}

/// Elasticsearch's default `http.max_content_length` (100mb; `HttpTransportSettings`).
pub const DEFAULT_HTTP_MAX_CONTENT_LENGTH: u64 = 100 * 1024 * 1024;

/// The answer of `Netty4HttpContentSizeHandler.TOO_LARGE_CLOSE`: 413, no body, `Content-Length:
/// 0`, `Connection: close` (no JSON error, no `X-elastic-product`: the request never reached the
/// REST layer).
fn too_large() -> Response<Body> {
    Response::builder()
        .status(413)
        .header("content-length", "0")
        .header("connection", "close")
        .header("x-standin", "dga-standin")
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn to_hyper(resp: Resp, svc: Service, cut: bool) -> Response<Body> {
    let src = match resp.body {
        RespBody::Bytes(b) => AssetSource::Bytes(b),
        RespBody::Source(s) => s,
    };
    let len = src.len();
    let limit = if cut { Some(len / 2) } else { None };
    let mut b = Response::builder()
        .status(resp.status)
        .header("x-standin", "dga-standin")
        .header("content-length", len.to_string());
    match svc {
        Service::Es => b = b.header("x-elastic-product", "Elasticsearch"),
        Service::Kibana => b = b.header("kbn-name", "dga-standin"),
        Service::GitHub => {}
    }
    for (k, v) in &resp.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(source_body(src, limit))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// `to_hyper` whose body stops after its first half and never ends (`FaultAction::StallBody`).
fn to_hyper_stalled(mut resp: Resp, svc: Service) -> Response<Body> {
    let bytes = match std::mem::replace(&mut resp.body, RespBody::Bytes(Bytes::new())) {
        RespBody::Bytes(b) => b,
        RespBody::Source(AssetSource::Bytes(b)) => b,
        RespBody::Source(AssetSource::File(path, _)) => {
            std::fs::read(path).unwrap_or_default().into()
        }
    };
    let len = bytes.len();
    let half = bytes.slice(0..len / 2);
    let mut full_len = to_hyper(resp, svc, false);
    full_len
        .headers_mut()
        .insert("content-length", len.to_string().parse().expect("a number"));
    let body = futures::StreamExt::chain(
        futures::stream::once(async move { Ok::<_, io::Error>(Frame::data(half)) }),
        futures::stream::pending(),
    );
    full_len.map(|_| BodyExt::boxed(StreamBody::new(body)))
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    svc: Service,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    if shared.is_down(svc) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "stand-in: service down",
        ));
    }
    let (parts, body) = req.into_parts();
    // Elasticsearch's Netty4HttpContentSizeHandler: a declared Content-Length over
    // `http.max_content_length` is answered 413 at once, body unread, and the connection closed;
    // a body without one is counted as it arrives and cut the same way once over.
    let max = shared.http_max_content_length.load(Ordering::SeqCst);
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if svc == Service::Es && declared.is_some_and(|n| n > max) {
        None
    } else if svc == Service::Es {
        match http_body_util::Limited::new(body, max as usize)
            .collect()
            .await
        {
            Ok(b) => Some(b.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => None,
            Err(e) => return Err(io::Error::other(e)),
        }
    } else {
        Some(body.collect().await.map_err(io::Error::other)?.to_bytes())
    };
    let Some(body) = body else {
        shared.record(RequestRecord {
            seq: shared.seq.fetch_add(1, Ordering::SeqCst) + 1,
            service: svc,
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            status: 413,
            off_spec: None,
            api: None,
            body_len: declared.unwrap_or(max + 1) as usize,
            fault: None,
            principal: crate::es::principal(&parts.headers),
        });
        return Ok(too_large());
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let mut rec = RequestRecord {
        seq: shared.seq.fetch_add(1, Ordering::SeqCst) + 1,
        service: svc,
        method: parts.method.as_str().to_string(),
        path: path.clone(),
        query: query.clone(),
        status: 0,
        off_spec: None,
        api: None,
        body_len: body.len(),
        fault: None,
        principal: crate::es::principal(&parts.headers),
    };
    let icpt = shared
        .interceptor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(i) = icpt {
        i(rec.clone()).await;
    }
    if shared.is_down(svc) {
        shared.record(rec);
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "stand-in: service down",
        ));
    }
    let mut cut = false;
    let mut stall = false;
    if let Some(action) = shared.match_fault(&rec) {
        rec.fault = Some(format!("{action:?}"));
        match action {
            FaultAction::Status {
                code,
                retry_after,
                body,
            } => {
                rec.status = code;
                shared.record(rec);
                let text = body.unwrap_or_else(|| match svc {
                    Service::Es => {
                        util::es_error_body(code, "stand_in_fault", "fault injected by dga-standin")
                            .to_string()
                    }
                    Service::Kibana => {
                        util::kibana_error_body(code, "fault injected by dga-standin").to_string()
                    }
                    Service::GitHub => {
                        serde_json::json!({"message": "fault injected by dga-standin"}).to_string()
                    }
                });
                let mut r = Resp::json(code, &Value::Null);
                r.body = RespBody::Bytes(Bytes::from(text));
                if let Some(s) = retry_after {
                    r = r.header("retry-after", &s.to_string());
                }
                return Ok(to_hyper(r, svc, false));
            }
            FaultAction::Delay(d) => tokio::time::sleep(d).await,
            FaultAction::CutBody => cut = true,
            FaultAction::StallBody => stall = true,
            FaultAction::Close => {
                shared.record(rec);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "stand-in fault: close",
                ));
            }
        }
    }
    // Elasticsearch accepts gzip/deflate-compressed request bodies (Content-Encoding).
    let body = match parts
        .headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some(enc)
            if svc == Service::Es
                && !body.is_empty()
                && (enc.eq_ignore_ascii_case("gzip") || enc.eq_ignore_ascii_case("deflate")) =>
        {
            use std::io::Read;
            let mut out = Vec::new();
            let res = if enc.eq_ignore_ascii_case("gzip") {
                flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out)
            } else {
                flate2::read::ZlibDecoder::new(&body[..]).read_to_end(&mut out)
            };
            match res {
                Ok(_) => Bytes::from(out),
                Err(e) => {
                    let r = crate::es::err(
                        400,
                        "illegal_argument_exception",
                        &format!("cannot decode {enc} request body: {e}"),
                    );
                    rec.status = 400;
                    shared.record(rec);
                    return Ok(to_hyper(r, svc, false));
                }
            }
        }
        _ => body,
    };
    // Kibana's setupBasePathRewrite (packages/core/http/core-http-server-internal/src/
    // http_server.ts): with rewriteBasePath the base path is removed from the request's path
    // (BasePath.remove: the path equals it or continues with `/`); any other path is 404.
    let path = match (svc, shared.st().kibana_base_path.clone()) {
        (Service::Kibana, Some(base)) => match path.strip_prefix(&base) {
            Some("") => "/".to_string(),
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            _ => {
                let r = Resp::json(404, &util::kibana_error_body(404, "Not Found"));
                rec.status = 404;
                shared.record(rec);
                return Ok(to_hyper(r, svc, false));
            }
        },
        _ => path,
    };
    let r = Req {
        method: rec.method.clone(),
        path,
        query: parse_query(&query),
        headers: parts.headers,
        body,
    };
    let resp = match svc {
        Service::Es => crate::es::handle(&shared, &r),
        Service::Kibana => crate::kibana::handle(&shared, &r),
        Service::GitHub => crate::github::handle(&shared, &r),
    };
    rec.status = resp.status;
    rec.off_spec = resp.off_spec.clone();
    rec.api = resp.api.clone();
    shared.record(rec);
    if stall {
        return Ok(to_hyper_stalled(resp, svc));
    }
    Ok(to_hyper(resp, svc, cut))
}

fn spawn_accept(listener: TcpListener, shared: Arc<Shared>, svc: Service) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if shared.is_down(svc) {
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let sh = shared.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let svc_fn = service_fn(move |req| handle(sh.clone(), svc, req));
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(io, svc_fn)
                    .await;
            });
        }
    })
}

/// A running stand-in (Elasticsearch + Kibana + GitHub). Dropping it stops serving.
pub struct Standin {
    shared: Arc<Shared>,
    es_addr: std::net::SocketAddr,
    kibana_addr: std::net::SocketAddr,
    github_addr: std::net::SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Standin {
    /// Bind three listeners on 127.0.0.1 (any free ports) and serve in background tasks.
    pub async fn start(cfg: StandinConfig) -> io::Result<Standin> {
        Self::start_on(cfg, 0, 0, 0).await
    }

    /// Like [`Standin::start`] with fixed ports (0 = any).
    pub async fn start_on(
        cfg: StandinConfig,
        es_port: u16,
        kibana_port: u16,
        github_port: u16,
    ) -> io::Result<Standin> {
        Self::start_on_host(cfg, "127.0.0.1", es_port, kibana_port, github_port).await
    }

    /// Like [`Standin::start_on`] with a chosen bind address (e.g. "0.0.0.0" in a container).
    pub async fn start_on_host(
        cfg: StandinConfig,
        host: &str,
        es_port: u16,
        kibana_port: u16,
        github_port: u16,
    ) -> io::Result<Standin> {
        let mut cfg = cfg;
        // A named profile ("7.10") reports its full version, as a real node would.
        if let Ok(p) = crate::profile::Profile::parse(&cfg.es_version) {
            cfg.es_version = p.to_string();
        }
        let shared = Arc::new(Shared::new(cfg));
        let es = TcpListener::bind((host, es_port)).await?;
        let kb = TcpListener::bind((host, kibana_port)).await?;
        let gh = TcpListener::bind((host, github_port)).await?;
        let (es_addr, kibana_addr, github_addr) =
            (es.local_addr()?, kb.local_addr()?, gh.local_addr()?);
        let gh_host = if github_addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            github_addr.ip().to_string()
        };
        let _ = shared
            .github_url
            .set(format!("http://{gh_host}:{}", github_addr.port()));
        let tasks = vec![
            spawn_accept(es, shared.clone(), Service::Es),
            spawn_accept(kb, shared.clone(), Service::Kibana),
            spawn_accept(gh, shared.clone(), Service::GitHub),
        ];
        Ok(Standin {
            shared,
            es_addr,
            kibana_addr,
            github_addr,
            tasks,
        })
    }

    fn url(a: &std::net::SocketAddr) -> String {
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            a.ip().to_string()
        };
        format!("http://{host}:{}", a.port())
    }
    pub fn es_url(&self) -> String {
        Self::url(&self.es_addr)
    }
    pub fn kibana_url(&self) -> String {
        Self::url(&self.kibana_addr)
    }
    /// GitHub API base: `{github_url}/repos/{owner}/{repo}/releases/tags/{tag}`.
    pub fn github_url(&self) -> String {
        Self::url(&self.github_addr)
    }
    pub fn config(&self) -> &StandinConfig {
        &self.shared.cfg
    }
    pub(crate) fn shared_state(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop serving: listeners are closed and every further request on open connections is dropped.
    pub fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }

    // ---- state inspection
    /// Stored trained-model configs, as GET returns them (without definition).
    pub fn models(&self) -> BTreeMap<String, Value> {
        self.shared
            .st()
            .models
            .iter()
            .map(|(k, m)| (k.clone(), m.config.clone()))
            .collect()
    }
    /// Length in bytes of the stored definition JSON (decompressed).
    pub fn model_definition_len(&self, id: &str) -> Option<usize> {
        self.shared
            .st()
            .models
            .get(id)
            .and_then(|m| m.definition.as_ref().map(|d| d.len()))
    }
    pub fn pipelines(&self) -> BTreeMap<String, Value> {
        self.shared.st().pipelines.clone()
    }
    /// Stored scripts as `{"lang":..,"source":..}`.
    pub fn scripts(&self) -> BTreeMap<String, Value> {
        self.shared.st().scripts.clone()
    }
    pub fn rules(&self, space: &str) -> Vec<Value> {
        self.shared
            .st()
            .rules
            .get(space)
            .cloned()
            .unwrap_or_default()
    }
    pub fn index_settings(&self) -> BTreeMap<String, Value> {
        self.shared.st().index_settings.clone()
    }
    pub fn index_templates(&self) -> BTreeMap<String, Value> {
        self.shared.st().index_templates.clone()
    }
    pub fn jobs(&self) -> BTreeMap<String, Value> {
        self.shared
            .st()
            .jobs
            .iter()
            .map(|(k, j)| (k.clone(), j.config.clone()))
            .collect()
    }
    pub fn datafeeds(&self) -> BTreeMap<String, Value> {
        self.shared
            .st()
            .datafeeds
            .iter()
            .map(|(k, j)| (k.clone(), j.config.clone()))
            .collect()
    }
    pub fn license(&self) -> String {
        self.shared.st().license_type.clone()
    }

    // ---- state mutation (simulated drift)
    /// Stores a pipeline as file-based settings do (ECK's StackConfigPolicy through the
    /// `file_settings` namespace): afterwards the REST API refuses to change or delete it.
    pub fn reserve_pipeline(&self, id: &str, body: Value) {
        let mut st = self.shared.st();
        st.pipelines.insert(id.into(), body);
        st.reserved.insert(
            (crate::es::RESERVED_PIPELINES.into(), id.into()),
            "file_settings".into(),
        );
    }
    /// Likewise for a composable index template.
    pub fn reserve_index_template(&self, name: &str, body: Value) {
        let mut st = self.shared.st();
        st.index_templates.insert(name.into(), body);
        st.reserved.insert(
            (crate::es::RESERVED_TEMPLATES.into(), name.into()),
            "file_settings".into(),
        );
    }
    pub fn put_pipeline(&self, id: &str, body: Value) {
        self.shared.st().pipelines.insert(id.into(), body);
    }
    pub fn delete_pipeline(&self, id: &str) {
        self.shared.st().pipelines.remove(id);
    }
    /// `body` may be `{"script":{...}}` (as PUT takes it) or the inner `{"lang","source"}`.
    pub fn put_script(&self, id: &str, body: Value) {
        let inner = body.get("script").cloned().unwrap_or(body);
        self.shared.st().scripts.insert(id.into(), inner);
    }
    pub fn delete_script(&self, id: &str) {
        self.shared.st().scripts.remove(id);
    }
    pub fn delete_model(&self, id: &str) {
        self.shared.st().models.remove(id);
    }
    /// Store a model config as given; a `definition` key (if any) is split off and kept as the
    /// definition.
    pub fn put_model(&self, id: &str, mut config: Value) {
        let def = config.as_object_mut().and_then(|o| o.remove("definition"));
        if let Some(o) = config.as_object_mut() {
            o.entry("model_id")
                .or_insert_with(|| Value::String(id.into()));
        }
        let m = StoredModel {
            config,
            definition: def.map(|d| Arc::from(d.to_string())),
            parsed: None,
        };
        self.shared.st().models.insert(id.into(), m);
    }
    /// Insert or replace (by `rule_id`) a rule in a space, as stored.
    pub fn put_rule(&self, space: &str, rule: Value) {
        let mut st = self.shared.st();
        let rules = st.rules.entry(space.into()).or_default();
        let rid = rule.get("rule_id").cloned();
        if let Some(pos) = rules
            .iter()
            .position(|r| rid.is_some() && r.get("rule_id") == rid.as_ref())
        {
            rules[pos] = rule;
        } else {
            rules.push(rule);
        }
    }
    pub fn delete_rule(&self, space: &str, rule_id: &str) {
        if let Some(r) = self.shared.st().rules.get_mut(space) {
            r.retain(|x| x.get("rule_id").and_then(|v| v.as_str()) != Some(rule_id));
        }
    }
    pub fn put_index_settings(&self, index: &str, settings: Value) {
        self.shared
            .st()
            .index_settings
            .insert(index.into(), settings);
    }
    /// Deletes an index (as `DELETE {index}` would); data streams are left as they are.
    pub fn delete_index(&self, index: &str) {
        self.shared.st().index_settings.remove(index);
    }
    /// Stores a composable index template as `PUT _index_template/{name}` would.
    pub fn put_index_template(&self, name: &str, body: Value) {
        self.shared.st().index_templates.insert(name.into(), body);
    }
    /// Creates data stream `name` (first backing index from its matching index template), as
    /// the first write to it (or `PUT _data_stream/{name}`) would.
    pub fn create_data_stream(&self, name: &str) -> Result<(), String> {
        crate::indices::create_data_stream(&mut self.shared.st(), name)
    }
    /// Rolls data stream `name` over (as `POST {name}/_rollover` would); returns the new write
    /// index, whose settings come from the index template as it is now.
    pub fn rollover(&self, name: &str) -> Result<String, String> {
        crate::indices::rollover(&mut self.shared.st(), name)
    }
    pub fn data_streams(&self) -> BTreeMap<String, Value> {
        self.shared.st().data_streams.clone()
    }
    pub fn put_data_stream(&self, name: &str, ds: Value) {
        self.shared.st().data_streams.insert(name.into(), ds);
    }
    /// Serves Kibana as `server.basePath: <base>` with `server.rewriteBasePath: true` does
    /// (what ECK's Kibana gets from that config): only paths under `base`, with it removed.
    pub fn set_kibana_base_path(&self, base: &str) {
        self.shared.st().kibana_base_path = Some(base.trim_end_matches('/').to_string());
    }
    /// Kibana starts over: the next `requests` Kibana requests (`None`: every one until
    /// [`Standin::kibana_ready`]) are answered as a Kibana that is not ready yet answers them
    /// (503; see `kibana_fields::not_ready`).
    pub fn kibana_starting(&self, requests: Option<u32>) {
        let n = requests.map_or(-1, i64::from);
        self.shared.kibana_not_ready.store(n, Ordering::SeqCst);
    }
    /// Kibana has finished starting.
    pub fn kibana_ready(&self) {
        self.shared.kibana_not_ready.store(0, Ordering::SeqCst);
    }
    /// Elasticsearch's `http.max_content_length` in bytes (default
    /// [`DEFAULT_HTTP_MAX_CONTENT_LENGTH`]): a larger request body is answered 413.
    pub fn set_http_max_content_length(&self, bytes: u64) {
        self.shared
            .http_max_content_length
            .store(bytes, Ordering::SeqCst);
    }
    pub fn set_license(&self, license_type: &str) {
        self.shared.st().license_type = license_type.into();
    }
    /// While down, new connections are accepted and closed at once, and requests on open
    /// connections are dropped unanswered.
    pub fn set_es_down(&self, down: bool) {
        self.shared.es_down.store(down, Ordering::SeqCst);
    }
    pub fn set_kibana_down(&self, down: bool) {
        self.shared.kibana_down.store(down, Ordering::SeqCst);
    }

    // ---- request log
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn off_spec_requests(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.off_spec.is_some())
            .collect()
    }
    pub fn clear_requests(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    // ---- faults
    /// Add a fault. Panics if `path_regex` is not a valid regex.
    pub fn add_fault(&self, fault: Fault) {
        self.try_add_fault(fault).expect("invalid fault path_regex");
    }
    pub fn try_add_fault(&self, fault: Fault) -> Result<(), regex::Error> {
        let re = Regex::new(&fault.path_regex)?;
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(FaultSlot { fault, re, seen: 0 });
        Ok(())
    }
    pub fn clear_faults(&self) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
    pub fn set_interceptor(&self, i: Option<Interceptor>) {
        *self
            .shared
            .interceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = i;
    }

    // ---- GitHub
    /// Publish a release with in-memory assets.
    pub fn publish_release(&self, repo: &str, tag: &str, assets: Vec<(String, Vec<u8>)>) {
        let srcs = assets
            .into_iter()
            .map(|(n, b)| (n, AssetSource::Bytes(Bytes::from(b))))
            .collect();
        self.publish(repo, tag, srcs);
    }
    /// Publish a release whose assets are streamed from files on disk.
    pub fn publish_release_files(
        &self,
        repo: &str,
        tag: &str,
        assets: Vec<(String, PathBuf)>,
    ) -> io::Result<()> {
        let mut srcs = Vec::new();
        for (n, p) in assets {
            let len = std::fs::metadata(&p)?.len();
            srcs.push((n, AssetSource::File(p, len)));
        }
        self.publish(repo, tag, srcs);
        Ok(())
    }
    /// Publish a release the builder wrote: its zip and its manifest, as GitHub holds them.
    pub fn publish_built(&self, repo: &str, rel: &crate::bundle::Release) -> io::Result<()> {
        self.publish_release_files(
            repo,
            &rel.tag,
            vec![
                (format!("{}.zip", rel.tag), rel.zip_path.clone()),
                (
                    format!("manifest-{}.json", rel.tag),
                    rel.manifest_path.clone(),
                ),
            ],
        )
    }
    fn publish(&self, repo: &str, tag: &str, assets: Vec<(String, AssetSource)>) {
        let rel_id = self.shared.next_id();
        let assets = assets
            .into_iter()
            .map(|(name, source)| Asset {
                id: self.shared.next_id(),
                name,
                source,
            })
            .collect();
        self.shared
            .st()
            .releases
            .insert((repo.into(), tag.into()), Release { id: rel_id, assets });
    }
    pub fn unpublish_release(&self, repo: &str, tag: &str) {
        self.shared
            .st()
            .releases
            .remove(&(repo.to_string(), tag.to_string()));
    }
    /// Serve a file at `{github_url}/mirror/{name}`.
    pub fn publish_file(&self, name: &str, path: PathBuf) -> io::Result<()> {
        let len = std::fs::metadata(&path)?.len();
        self.shared
            .st()
            .mirror
            .insert(name.into(), AssetSource::File(path, len));
        Ok(())
    }
    /// Serve bytes at `{github_url}/mirror/{name}`.
    pub fn publish_bytes(&self, name: &str, bytes: Vec<u8>) {
        self.shared
            .st()
            .mirror
            .insert(name.into(), AssetSource::Bytes(Bytes::from(bytes)));
    }

    /// Everything stored, as JSON (used by the admin API).
    pub fn state_json(&self) -> Value {
        serde_json::json!({
            "license": self.license(),
            "models": self.models(),
            "pipelines": self.pipelines(),
            "scripts": self.scripts(),
            "rules": self.shared.st().rules.clone(),
            "index_settings": self.index_settings(),
            "index_templates": self.index_templates(),
            "jobs": self.jobs(),
            "datafeeds": self.datafeeds(),
        })
    }

    /// Serve the admin API (not spec-checked, not logged): `GET /requests`, `GET /state`,
    /// `POST /faults` (JSON [`Fault`]), `DELETE /faults`, `DELETE /requests`, `POST /license/{type}`.
    /// Returns the admin URL. The admin server keeps a handle to this stand-in's state.
    pub async fn start_admin(&self, host: &str, port: u16) -> io::Result<String> {
        let l = TcpListener::bind((host, port)).await?;
        let addr = l.local_addr()?;
        let me = Arc::new(Standin {
            shared: self.shared.clone(),
            es_addr: self.es_addr,
            kibana_addr: self.kibana_addr,
            github_addr: self.github_addr,
            tasks: vec![],
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, io::Error>(admin(&me, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self::url(&addr))
    }
}

async fn admin(me: &Standin, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (code, v) = match (method.as_str(), path.as_str()) {
        ("GET", "/requests") => (200, serde_json::to_value(me.requests()).unwrap_or_default()),
        ("DELETE", "/requests") => {
            me.clear_requests();
            (200, serde_json::json!({"acknowledged": true}))
        }
        ("GET", "/state") => (200, me.state_json()),
        ("POST", "/faults") => match serde_json::from_slice::<Fault>(&body) {
            Ok(f) => match me.try_add_fault(f) {
                Ok(()) => (200, serde_json::json!({"acknowledged": true})),
                Err(e) => (400, serde_json::json!({"error": e.to_string()})),
            },
            Err(e) => (400, serde_json::json!({"error": e.to_string()})),
        },
        ("DELETE", "/faults") => {
            me.clear_faults();
            (200, serde_json::json!({"acknowledged": true}))
        }
        ("POST", p) if p.starts_with("/license/") => {
            me.set_license(&p["/license/".len()..]);
            (200, serde_json::json!({"acknowledged": true}))
        }
        _ => (404, serde_json::json!({"error": "unknown admin route"})),
    };
    to_hyper(Resp::json(code, &v), Service::GitHub, false)
}

impl Drop for Standin {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            self.shutdown();
        }
    }
}
