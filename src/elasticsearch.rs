//! A typed Elasticsearch client for the objects the package installs: trained models (streamed
//! from disk), stored scripts, ingest pipelines. Errors map onto `Error` via `http`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::bundle::ModelFile;
use crate::error::{Error, Service, Transience};
use crate::http;
use crate::target::Endpoint;

const ES: Service = Service::Elasticsearch;

/// The oldest Elasticsearch the operator writes to. `/_ml/trained_models` exists from 7.10
/// (7.9 and older used `/_ml/inference`), but pipelines accept `_meta`, where the operator
/// records what it owns, only from 7.15 (ES PRs #75905, #76381): 7.10 to 7.14 refuse each
/// pipeline with 400 `parse_exception`, so they are refused here, before any write.
pub const MIN_VERSION: (u64, u64) = (7, 15);
pub const ML_LICENSES: [&str; 3] = ["platinum", "enterprise", "trial"];

#[derive(Clone)]
pub struct Elasticsearch {
    http: reqwest::Client,
    endpoint: Endpoint,
}

/// What `glance_metadata` found. An empty answer is a valid one: filter_path drops what
/// matches nothing, so a cluster without our scripts answers `{}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataGlance {
    pub scripts: BTreeMap<String, Value>,
    /// Persistent task id -> the state it reports (`opened`, `started`, ...), if any.
    pub tasks: BTreeMap<String, Option<String>>,
    /// Indices the filter asked for (`metadata.indices`), as the cluster state holds them
    /// (every state, hidden or not: the caller resolves them as `_settings` would).
    pub indices: BTreeMap<String, StateIndex>,
    /// Composable index templates the filter asked for (`metadata.index_template`), with only
    /// the filtered fields.
    pub templates: BTreeMap<String, Value>,
}

/// An index as a filtered cluster state shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateIndex {
    pub open: bool,
    pub hidden: bool,
    pub pipelines: crate::engine::observe::IndexPipelines,
}

/// What else a glance's cluster state read carries besides scripts and tasks: `filter_path`
/// segments (dots already escaped) of the indices and index templates to include.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GlanceExtra {
    pub index_segments: Vec<String>,
    pub template_segments: Vec<String>,
}

impl GlanceExtra {
    /// The `filter_path` entries: per index its state and its `hidden` and pipeline settings
    /// (`*_pipeline`: default and final), per template its patterns (always there) and pipeline
    /// settings.
    pub fn filters(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.index_segments {
            out.push(format!("metadata.indices.{s}.state"));
            out.push(format!("metadata.indices.{s}.settings.index.hidden"));
            out.push(format!("metadata.indices.{s}.settings.index.*_pipeline"));
        }
        for s in &self.template_segments {
            let t = format!("metadata.index_template.index_template.{s}");
            out.push(format!("{t}.index_patterns"));
            out.push(format!("{t}.template.settings.index.*_pipeline"));
        }
        out
    }
}

impl MetadataGlance {
    fn parse(body: &Value, scripts: &[String]) -> MetadataGlance {
        let mut g = MetadataGlance::default();
        let Some(meta) = body.get("metadata") else {
            return g;
        };
        for (name, i) in meta
            .get("indices")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let setting = |k: &str| {
                i.pointer(&format!("/settings/index/{k}"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            g.indices.insert(
                name.clone(),
                StateIndex {
                    open: i.get("state").and_then(Value::as_str) != Some("close"),
                    hidden: setting("hidden").as_deref() == Some("true"),
                    pipelines: crate::engine::observe::IndexPipelines {
                        default_pipeline: setting("default_pipeline"),
                        final_pipeline: setting("final_pipeline"),
                    },
                },
            );
        }
        if let Some(t) = meta
            .pointer("/index_template/index_template")
            .and_then(Value::as_object)
        {
            g.templates = t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        for id in scripts {
            if let Some(s) = meta.pointer(&format!("/stored_scripts/{id}")) {
                g.scripts.insert(id.clone(), s.clone());
            }
        }
        let tasks = meta
            .pointer("/persistent_tasks/tasks")
            .and_then(Value::as_array);
        for t in tasks.into_iter().flatten() {
            let Some(id) = t.get("id").and_then(Value::as_str) else {
                continue;
            };
            // A job task's state is `{"state": "opened", ...}`, a datafeed's a bare "started".
            let state = t
                .get("task")
                .and_then(Value::as_object)
                .and_then(|m| m.values().next())
                .and_then(|v| v.get("state"))
                .and_then(|s| s.get("state").unwrap_or(s).as_str())
                .map(str::to_string);
            g.tasks.insert(id.to_string(), state);
        }
        g
    }
}

/// Elasticsearch's default `http.max_content_length` (100mb).
pub const DEFAULT_MAX_CONTENT_LENGTH: u64 = 100 * 1024 * 1024;

/// Why a model upload answered 413: its size against the cluster's limit.
pub fn too_large(len: u64) -> String {
    format!(
        "the model upload is {len} bytes ({:.1} MiB), more than this cluster's http.max_content_length \
         (Elasticsearch answered 413 Request Entity Too Large; the default limit is 100mb = {DEFAULT_MAX_CONTENT_LENGTH} bytes): \
         raise http.max_content_length in elasticsearch.yml on every node, or use a smaller model",
        len as f64 / (1024.0 * 1024.0)
    )
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterInfo {
    pub version: String,
    pub cluster_uuid: String,
}

impl Elasticsearch {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Self, Error> {
        Ok(Elasticsearch {
            http: endpoint.http_client(timeout)?,
            endpoint,
        })
    }

    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.endpoint.url))
            .header("Accept", "application/json");
        self.endpoint.auth.apply(r)
    }

    async fn call(&self, what: &str, req: reqwest::RequestBuilder) -> Result<(u16, Value), Error> {
        let resp = http::send(ES, what, req).await?;
        let status = resp.status().as_u16();
        let body = http::json(ES, what, resp).await?;
        Ok((status, body))
    }

    fn rejected(what: &str, status: u16, body: &Value) -> Error {
        Error::Rejected {
            service: ES,
            what: what.to_string(),
            status,
            detail: http::summarize_json(body).unwrap_or_else(|| format!("HTTP {status}")),
        }
    }

    /// `GET /`: version and cluster uuid; refuses versions without the trained models API.
    pub async fn info(&self) -> Result<ClusterInfo, Error> {
        let what = "reading cluster info";
        let (status, body) = self.call(what, self.req(Method::GET, "/")).await?;
        if status != 200 {
            return Err(Self::rejected(what, status, &body));
        }
        let version = body
            .pointer("/version/number")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let cluster_uuid = body
            .get("cluster_uuid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if version.is_empty() {
            return Err(Error::Rejected {
                service: ES,
                what: what.into(),
                status,
                detail: "the answer has no version.number: is this Elasticsearch?".into(),
            });
        }
        let mut parts = version
            .split(['.', '-'])
            .map(|p| p.parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < MIN_VERSION {
            return Err(Error::VersionUnsupported {
                service: ES,
                version,
                detail: if (major, minor) < (7, 10) {
                    format!(
                        "trained models need Elasticsearch 7.10 or later, and the operator {}.{} or later",
                        MIN_VERSION.0, MIN_VERSION.1
                    )
                } else {
                    format!(
                        "the operator needs Elasticsearch {}.{} or later: before 7.15 ingest pipelines refuse `_meta`, where the operator records which DgaModel owns each pipeline (nothing was written; upgrade the cluster)",
                        MIN_VERSION.0, MIN_VERSION.1
                    )
                },
            });
        }
        Ok(ClusterInfo {
            version,
            cluster_uuid,
        })
    }

    /// `GET /_license`: the licence type when it is active.
    pub async fn license(&self) -> Result<String, Error> {
        let what = "reading the licence";
        let (status, body) = self.call(what, self.req(Method::GET, "/_license")).await?;
        if status != 200 {
            return Err(Self::rejected(what, status, &body));
        }
        let ty = body
            .pointer("/license/type")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_string();
        let st = body
            .pointer("/license/status")
            .and_then(Value::as_str)
            .unwrap_or("active");
        if st != "active" {
            return Ok(format!("{ty} ({st})"));
        }
        Ok(ty)
    }

    /// Trained model configs (without definitions) for the ids; missing ids are simply absent.
    pub async fn get_models(&self, ids: &[String]) -> Result<BTreeMap<String, Value>, Error> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.models_at(&format!(
            "/_ml/trained_models/{}?allow_no_match=true&size=1000",
            ids.join(",")
        ))
        .await
    }

    /// Trained models carrying a tag.
    pub async fn get_models_tagged(&self, tag: &str) -> Result<BTreeMap<String, Value>, Error> {
        self.models_at(&format!(
            "/_ml/trained_models/_all?allow_no_match=true&size=1000&tags={tag}"
        ))
        .await
    }

    async fn models_at(&self, path: &str) -> Result<BTreeMap<String, Value>, Error> {
        let what = "listing trained models";
        let (status, body) = self.call(what, self.req(Method::GET, path)).await?;
        if status == 404 {
            return Ok(BTreeMap::new());
        }
        if status != 200 {
            return Err(Self::rejected(what, status, &body));
        }
        let mut out = BTreeMap::new();
        for m in body
            .get("trained_model_configs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = m.get("model_id").and_then(Value::as_str) {
                out.insert(id.to_string(), m.clone());
            }
        }
        Ok(out)
    }

    /// Uploads a model, streaming its definition from disk. `head` replaces the file's small
    /// fields (so ownership metadata can be added without rewriting the definition).
    pub async fn put_model(
        &self,
        id: &str,
        head: &serde_json::Map<String, Value>,
        model: &ModelFile,
    ) -> Result<(), Error> {
        let what = format!("uploading trained model {id}");
        let mut prefix = serde_json::to_vec(head).map_err(|e| Error::Internal(e.to_string()))?;
        prefix.pop(); // the closing brace: the definition follows
        if head.is_empty() {
            prefix.extend_from_slice(b"\"");
        } else {
            prefix.extend_from_slice(b",\"");
        }
        prefix.extend_from_slice(model.definition_key.as_bytes());
        prefix.extend_from_slice(b"\":");
        let file = tokio::fs::File::open(&model.definition_path)
            .await
            .map_err(|e| Error::Internal(format!("bundle cache: {e}")))?;
        let len = prefix.len() as u64 + model.definition_len + 1;
        let body =
            futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(prefix)) })
                .chain(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 * 1024,
                ))
                .chain(futures::stream::once(async {
                    Ok(Bytes::from_static(b"}"))
                }));
        let req = self
            .req(Method::PUT, &format!("/_ml/trained_models/{id}"))
            .header("Content-Type", "application/json")
            .header("Content-Length", len)
            .body(reqwest::Body::wrap_stream(body));
        let resp = match http::send(ES, &what, req).await {
            Ok(r) => r,
            // Elasticsearch answers an oversized upload 413 and closes the connection at once; a
            // client still writing the body may see only the cut. Ask once more with the headers
            // alone: the length is judged before any body is read.
            Err(e) if e.transience() == Some(Transience::Dropped) => {
                if self.refuses_length(id, len).await {
                    return Err(Error::InvalidBundle(crate::bundle::BundleError {
                        file: model.file.clone(),
                        problem: too_large(len),
                    }));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if resp.status().as_u16() == 413 {
            // Netty4HttpContentSizeHandler: over `http.max_content_length`, answered before the
            // body is read, with no body. Sending it again cannot help: the model is refused.
            return Err(Error::InvalidBundle(crate::bundle::BundleError {
                file: model.file.clone(),
                problem: too_large(len),
            }));
        }
        let status = resp.status().as_u16();
        let body = http::json(ES, &what, resp).await?;
        if status == 200 {
            return Ok(());
        }
        if body.pointer("/error/type").and_then(Value::as_str)
            == Some("resource_already_exists_exception")
        {
            return Err(Error::Conflict(format!(
                "trained model {id} already exists"
            )));
        }
        Err(Self::rejected(&what, status, &body))
    }

    /// Whether Elasticsearch refuses a model upload of `len` bytes for its length alone: the
    /// headers are sent with a body that never comes, and `http.max_content_length` is checked
    /// on the declared `Content-Length` before any body is read (413). Any other outcome within
    /// a few seconds (the cluster waiting for the body) is "no"; the request is then dropped
    /// unfinished, which creates nothing.
    async fn refuses_length(&self, id: &str, len: u64) -> bool {
        let body =
            reqwest::Body::wrap_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let req = self
            .req(Method::PUT, &format!("/_ml/trained_models/{id}"))
            .header("Content-Type", "application/json")
            .header("Content-Length", len)
            .body(body);
        matches!(
            tokio::time::timeout(Duration::from_secs(5), req.send()).await,
            Ok(Ok(r)) if r.status().as_u16() == 413
        )
    }

    pub async fn delete_model(&self, id: &str) -> Result<(), Error> {
        let what = format!("deleting trained model {id}");
        let req = self.req(Method::DELETE, &format!("/_ml/trained_models/{id}"));
        self.simple(&what, req, &[200, 404]).await.map(drop)
    }

    /// A stored script (`{"lang","source"}`), or None.
    pub async fn get_script(&self, id: &str) -> Result<Option<Value>, Error> {
        let what = format!("reading stored script {id}");
        let (status, body) = self
            .call(&what, self.req(Method::GET, &format!("/_scripts/{id}")))
            .await?;
        match status {
            200 if body.get("found") != Some(&Value::Bool(false)) => {
                Ok(body.get("script").cloned())
            }
            200 | 404 => Ok(None),
            _ => Err(Self::rejected(&what, status, &body)),
        }
    }

    pub async fn put_script(&self, id: &str, body: &Value) -> Result<(), Error> {
        let what = format!("writing stored script {id}");
        let req = self.req(Method::PUT, &format!("/_scripts/{id}")).json(body);
        self.simple(&what, req, &[200]).await.map(drop)
    }

    pub async fn delete_script(&self, id: &str) -> Result<(), Error> {
        let what = format!("deleting stored script {id}");
        let req = self.req(Method::DELETE, &format!("/_scripts/{id}"));
        self.simple(&what, req, &[200, 404]).await.map(drop)
    }

    /// Pipelines by id (ids may be wildcards); missing ones are absent.
    pub async fn get_pipelines(&self, ids: &[String]) -> Result<BTreeMap<String, Value>, Error> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let what = "reading ingest pipelines";
        let (status, body) = self
            .call(
                what,
                self.req(Method::GET, &format!("/_ingest/pipeline/{}", ids.join(","))),
            )
            .await?;
        match status {
            200 => Ok(body
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), without_pipeline_dates(v.clone())))
                        .collect()
                })
                .unwrap_or_default()),
            404 => Ok(BTreeMap::new()),
            _ => Err(Self::rejected(what, status, &body)),
        }
    }

    pub async fn put_pipeline(&self, id: &str, body: &Value) -> Result<(), Error> {
        let what = format!("writing ingest pipeline {id}");
        let req = self
            .req(Method::PUT, &format!("/_ingest/pipeline/{id}"))
            .json(body);
        self.simple(&what, req, &[200]).await.map(drop)
    }

    pub async fn delete_pipeline(&self, id: &str) -> Result<(), Error> {
        let what = format!("deleting ingest pipeline {id}");
        let req = self.req(Method::DELETE, &format!("/_ingest/pipeline/{id}"));
        self.simple(&what, req, &[200, 404]).await.map(drop)
    }

    /// A request whose success statuses are given; anything else is an error.
    async fn simple(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<(u16, Value), Error> {
        let (status, body) = self.call(what, req).await?;
        if ok.contains(&status) {
            Ok((status, body))
        } else {
            Err(Self::rejected(what, status, &body))
        }
    }

    /// The first entry of a list answer at `pointer` (e.g. `/jobs/0`), or None on a 404.
    async fn get_first(
        &self,
        what: &str,
        path: &str,
        pointer: &str,
    ) -> Result<Option<Value>, Error> {
        let (status, body) = self
            .simple(what, self.req(Method::GET, path), &[200, 404])
            .await?;
        Ok((status != 404)
            .then(|| body.pointer(pointer).cloned())
            .flatten())
    }

    /// An anomaly detection job's config, or None.
    pub async fn get_job(&self, id: &str) -> Result<Option<Value>, Error> {
        let what = format!("reading anomaly detection job {id}");
        self.get_first(&what, &format!("/_ml/anomaly_detectors/{id}"), "/jobs/0")
            .await
    }

    /// `opened`, `closed`, ... or None when the job does not exist.
    pub async fn job_state(&self, id: &str) -> Result<Option<String>, Error> {
        let what = format!("reading job stats {id}");
        let path = format!("/_ml/anomaly_detectors/{id}/_stats");
        Ok(state_of(self.get_first(&what, &path, "/jobs/0").await?))
    }

    pub async fn put_job(&self, id: &str, body: &Value) -> Result<(), Error> {
        let what = format!("creating anomaly detection job {id}");
        self.simple(
            &what,
            self.req(Method::PUT, &format!("/_ml/anomaly_detectors/{id}"))
                .json(body),
            &[200],
        )
        .await
        .map(drop)
    }

    /// `POST _ml/anomaly_detectors/{id}/_update`: the fields given replace the job's (a
    /// `custom_settings` object replaces the whole map).
    pub async fn update_job(&self, id: &str, update: &Value) -> Result<(), Error> {
        let what = format!("updating anomaly detection job {id}");
        self.simple(
            &what,
            self.req(
                Method::POST,
                &format!("/_ml/anomaly_detectors/{id}/_update"),
            )
            .json(update),
            &[200],
        )
        .await
        .map(drop)
    }

    pub async fn open_job(&self, id: &str) -> Result<(), Error> {
        let what = format!("opening anomaly detection job {id}");
        self.simple(
            &what,
            self.req(Method::POST, &format!("/_ml/anomaly_detectors/{id}/_open")),
            &[200],
        )
        .await
        .map(drop)
    }

    pub async fn close_job(&self, id: &str) -> Result<(), Error> {
        let what = format!("closing anomaly detection job {id}");
        self.simple(
            &what,
            self.req(
                Method::POST,
                &format!("/_ml/anomaly_detectors/{id}/_close?force=true"),
            ),
            &[200, 404],
        )
        .await
        .map(drop)
    }

    pub async fn delete_job(&self, id: &str) -> Result<(), Error> {
        let what = format!("deleting anomaly detection job {id}");
        self.simple(
            &what,
            self.req(
                Method::DELETE,
                &format!("/_ml/anomaly_detectors/{id}?force=true"),
            ),
            &[200, 404],
        )
        .await
        .map(drop)
    }

    pub async fn get_datafeed(&self, id: &str) -> Result<Option<Value>, Error> {
        let what = format!("reading datafeed {id}");
        self.get_first(&what, &format!("/_ml/datafeeds/{id}"), "/datafeeds/0")
            .await
    }

    /// `started`, `stopped`, ... or None when the datafeed does not exist.
    pub async fn datafeed_state(&self, id: &str) -> Result<Option<String>, Error> {
        let what = format!("reading datafeed stats {id}");
        let path = format!("/_ml/datafeeds/{id}/_stats");
        Ok(state_of(
            self.get_first(&what, &path, "/datafeeds/0").await?,
        ))
    }

    pub async fn put_datafeed(&self, id: &str, body: &Value) -> Result<(), Error> {
        let what = format!("creating datafeed {id}");
        self.simple(
            &what,
            self.req(Method::PUT, &format!("/_ml/datafeeds/{id}"))
                .json(body),
            &[200],
        )
        .await
        .map(drop)
    }

    /// Starts a datafeed. `Ok(Some(reason))`: Elasticsearch refused because there is no data
    /// to read yet (no index matches the datafeed's indices, or a field the job reads is not
    /// mapped in any of them), which the next attempt may find changed; any other refusal is
    /// an error.
    pub async fn start_datafeed(&self, id: &str) -> Result<Option<String>, Error> {
        let what = format!("starting datafeed {id}");
        let (status, body) = self
            .call(
                &what,
                self.req(Method::POST, &format!("/_ml/datafeeds/{id}/_start")),
            )
            .await?;
        if status == 200 {
            return Ok(None);
        }
        if let Some(reason) = no_data_yet(status, &body) {
            return Ok(Some(reason));
        }
        Err(Self::rejected(&what, status, &body))
    }

    pub async fn stop_datafeed(&self, id: &str) -> Result<(), Error> {
        let what = format!("stopping datafeed {id}");
        self.simple(
            &what,
            self.req(
                Method::POST,
                &format!("/_ml/datafeeds/{id}/_stop?force=true"),
            ),
            &[200, 404],
        )
        .await
        .map(drop)
    }

    pub async fn delete_datafeed(&self, id: &str) -> Result<(), Error> {
        let what = format!("deleting datafeed {id}");
        self.simple(
            &what,
            self.req(Method::DELETE, &format!("/_ml/datafeeds/{id}?force=true")),
            &[200, 404],
        )
        .await
        .map(drop)
    }

    /// Runs documents through a pipeline given in the body, without indexing them.
    pub async fn simulate(&self, body: &Value) -> Result<Value, Error> {
        let what = "simulating the enrichment on canary documents";
        let req = self
            .req(Method::POST, "/_ingest/pipeline/_simulate")
            .json(body);
        let (_, v) = self.simple(what, req, &[200]).await?;
        Ok(v)
    }

    /// `index.default_pipeline` and `index.final_pipeline` of the indices matching the names.
    /// `index.uuid` is asked for too because Elasticsearch leaves out of a filtered settings
    /// answer every index none of whose settings match the filter
    /// (`TransportGetSettingsAction`: an index with empty filtered settings is not added), and
    /// a new Packetbeat index has neither pipeline setting: every index has a uuid.
    pub async fn index_pipelines(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, crate::engine::observe::IndexPipelines>, Error> {
        let what = "reading index pipeline settings";
        let path = format!(
            "/{}/_settings/index.uuid,index.default_pipeline,index.final_pipeline?allow_no_indices=true&ignore_unavailable=true&expand_wildcards=open",
            names.join(",")
        );
        let (status, body) = self
            .simple(what, self.req(Method::GET, &path), &[200, 404])
            .await?;
        let mut out = BTreeMap::new();
        if status == 404 {
            return Ok(out);
        }
        for (index, v) in body.as_object().into_iter().flatten() {
            let get = |k: &str| {
                v.pointer(&format!("/settings/index/{k}"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            out.insert(
                index.clone(),
                crate::engine::observe::IndexPipelines {
                    default_pipeline: get("default_pipeline"),
                    final_pipeline: get("final_pipeline"),
                },
            );
        }
        Ok(out)
    }

    /// Stored scripts and persistent task states in one request: the only API that returns
    /// several stored scripts at once is the cluster state. Indices are never named in it:
    /// Elasticsearch then answers with a metadata holding only those indices and none of the
    /// customs (stored scripts, persistent tasks; `TransportClusterStateAction`), so index
    /// settings come from [`Self::index_pipelines`]. Elastic calls
    /// its format internal, so callers treat anything unexpected as "cannot tell" and fall back
    /// to the per-object APIs; `local=true` keeps the read off the elected master.
    /// `None` when the cluster refuses the request (privileges, serverless).
    pub async fn glance_metadata(
        &self,
        scripts: &[String],
        tasks: bool,
        extra: &GlanceExtra,
    ) -> Result<Option<MetadataGlance>, Error> {
        let what = "reading stored scripts and tasks from the cluster state";
        let mut filter: Vec<String> = Vec::new();
        // filter_path splits on dots and reads `*` and `,`: such ids fall back to the whole map.
        if scripts.iter().all(|id| {
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        }) {
            filter.extend(
                scripts
                    .iter()
                    .map(|id| format!("metadata.stored_scripts.{id}")),
            );
        } else {
            filter.push("metadata.stored_scripts".into());
        }
        if tasks {
            filter.push("metadata.persistent_tasks.tasks.id".into());
            filter.push("metadata.persistent_tasks.tasks.task.*.state".into());
        }
        filter.extend(extra.filters());
        let path = "/_cluster/state/metadata";
        // Ids outside [A-Za-z0-9_-] never reach the filter as they are; index and template
        // names come with their dots escaped (`\.`), the one character that needs escaping
        // in a query.
        let query = format!(
            "local=true&allow_no_indices=true&ignore_unavailable=true&expand_wildcards=open&filter_path={}",
            filter.join(",").replace('\\', "%5C")
        );
        let req = self.req(Method::GET, &format!("{path}?{query}"));
        // Refused for this credential (403) or this kind of cluster: a lasting answer. Anything
        // else (401, 429, 5xx, no answer) is the cluster's state now, for the full pass to
        // report.
        let (status, body) = match self.call(what, req).await {
            Err(Error::Unauthorized { status: 403, .. }) => return Ok(None),
            other => other?,
        };
        match status {
            200 => Ok(Some(MetadataGlance::parse(&body, scripts))),
            400 | 404 | 405 | 410 | 501 => Ok(None),
            _ => Err(Self::rejected(what, status, &body)),
        }
    }

    /// Data streams matching the patterns, each with the composable index template its next
    /// backing index is created from (`GET _data_stream`: `template`; 7.9+). A plain name is
    /// asked as `name*` and matched exactly here, so one that is no data stream is no 404.
    pub async fn data_stream_templates(
        &self,
        patterns: &[String],
    ) -> Result<BTreeMap<String, String>, Error> {
        let what = "reading data streams";
        let asked: Vec<String> = patterns
            .iter()
            // Backing indices (recorded wired indices) are never data streams.
            .filter(|p| !p.starts_with('.'))
            .map(|p| {
                if p.contains('*') {
                    p.clone()
                } else {
                    format!("{p}*")
                }
            })
            .collect();
        let mut out = BTreeMap::new();
        if asked.is_empty() {
            return Ok(out);
        }
        let path = format!("/_data_stream/{}", asked.join(","));
        let (status, body) = self
            .simple(what, self.req(Method::GET, &path), &[200, 404])
            .await?;
        if status == 404 {
            return Ok(out);
        }
        for ds in body
            .get("data_streams")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(template)) = (
                ds.get("name").and_then(Value::as_str),
                ds.get("template").and_then(Value::as_str),
            ) else {
                continue;
            };
            if patterns
                .iter()
                .any(|p| crate::engine::diff::wildcard(p, name))
            {
                out.insert(name.to_string(), template.to_string());
            }
        }
        Ok(out)
    }

    /// A composable index template (`GET _index_template/{name}`: its `index_template`), or
    /// None.
    pub async fn get_index_template(&self, name: &str) -> Result<Option<Value>, Error> {
        let what = format!("reading index template {name}");
        let (status, body) = self
            .simple(
                &what,
                self.req(Method::GET, &format!("/_index_template/{name}")),
                &[200, 404],
            )
            .await?;
        if status == 404 {
            return Ok(None);
        }
        Ok(body
            .get("index_templates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|t| t.get("index_template").cloned()))
    }

    /// Sets (or with None, removes) `index.final_pipeline` in a composable index template's
    /// `template.settings`, keeping everything else: read, change that one setting, write back.
    /// Read-only fields a GET adds (the 9.x date fields) are not sent back.
    pub async fn set_template_final_pipeline(
        &self,
        name: &str,
        pipeline: Option<&str>,
    ) -> Result<(), Error> {
        let what = format!("setting index.final_pipeline in index template {name}");
        let Some(mut t) = self.get_index_template(name).await? else {
            if pipeline.is_none() {
                return Ok(());
            }
            return Err(Error::Rejected {
                service: ES,
                what,
                status: 404,
                detail: format!("index template {name} is gone"),
            });
        };
        if let Some(o) = t.as_object_mut() {
            for k in [
                "created_date_millis",
                "modified_date_millis",
                "created_date",
                "modified_date",
            ] {
                o.remove(k);
            }
        }
        crate::engine::templates::set_final_pipeline(&mut t, pipeline);
        self.simple(
            &what,
            self.req(Method::PUT, &format!("/_index_template/{name}"))
                .json(&t),
            &[200],
        )
        .await
        .map(drop)
    }

    /// Sets (or with None, removes) an index's `index.final_pipeline`.
    pub async fn set_final_pipeline(
        &self,
        index: &str,
        pipeline: Option<&str>,
    ) -> Result<(), Error> {
        let what = format!("setting index.final_pipeline of {index}");
        let body = serde_json::json!({"index": {"final_pipeline": pipeline}});
        self.simple(
            &what,
            self.req(Method::PUT, &format!("/{index}/_settings"))
                .json(&body),
            &[200],
        )
        .await
        .map(drop)
    }
}

/// The `state` of a stats entry.
fn state_of(stats: Option<Value>) -> Option<String> {
    stats?.get("state")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_glance_reads_scripts_and_both_task_state_shapes() {
        let body = json!({"metadata": {
            "stored_scripts": {"s1": {"lang": "painless", "source": "x"}, "other": {"source": "y"}},
            "persistent_tasks": {"tasks": [
                {"id": "job-j", "task": {"xpack/ml/job": {"state": {"state": "opened"}}}},
                {"id": "datafeed-f", "task": {"xpack/ml/datafeed": {"state": "started"}}},
                {"id": "job-k", "task": {"xpack/ml/job": {"params": {}}}}
            ]}
        }});
        let g = MetadataGlance::parse(&body, &["s1".into(), "s2".into()]);
        assert_eq!(g.scripts.keys().collect::<Vec<_>>(), ["s1"]);
        assert_eq!(g.tasks["job-j"].as_deref(), Some("opened"));
        assert_eq!(g.tasks["datafeed-f"].as_deref(), Some("started"));
        assert_eq!(g.tasks["job-k"], None);
        // filter_path drops what matches nothing: `{}` is a cluster with none of it.
        assert_eq!(
            MetadataGlance::parse(&json!({}), &["s1".into()]),
            MetadataGlance::default()
        );
    }

    /// A server that reads a request's headers, then: the first connection is closed unanswered
    /// (what a client still writing may see of Elasticsearch's 413-and-close), the next ones
    /// get `413` when the declared length is over `max`, else wait.
    async fn cut_then_413(max: u64) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let len: u64 = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if n == 0 {
                        return; // dropped: the connection closes unanswered
                    }
                    if len > max {
                        let _ = sock
                            .write_all(b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        (url, seen)
    }

    fn model_file(dir: &std::path::Path, bytes: usize) -> ModelFile {
        let path = dir.join("model.definition");
        std::fs::write(&path, vec![b' '; bytes]).unwrap();
        ModelFile {
            id: "m".into(),
            file: "m_model.json".into(),
            head: serde_json::Map::new(),
            definition_key: "definition".into(),
            definition_path: path,
            definition_len: bytes as u64,
            crc32: "00000000".into(),
        }
    }

    #[tokio::test]
    async fn an_upload_cut_by_a_413_is_told_from_a_dropped_connection() {
        let dir = tempfile::tempdir().unwrap();
        let model = model_file(dir.path(), 4096);
        let head = serde_json::Map::new();
        // Over the limit: the cut upload is followed by one header-only request, which gets 413.
        let (url, seen) = cut_then_413(1000).await;
        let es = Elasticsearch::new(
            Endpoint::parse(&url, crate::target::Auth::None, None, "url").unwrap(),
            Duration::from_secs(10),
        )
        .unwrap();
        match es.put_model("m", &head, &model).await {
            Err(Error::InvalidBundle(b)) => {
                assert_eq!(b.file, "m_model.json");
                assert!(b.problem.contains("http.max_content_length"), "{b}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Under the limit: the cut stays what it is (transient, for a retry).
        let (url, _) = cut_then_413(1 << 20).await;
        let es = Elasticsearch::new(
            Endpoint::parse(&url, crate::target::Auth::None, None, "url").unwrap(),
            Duration::from_secs(10),
        )
        .unwrap();
        let e = es.put_model("m", &head, &model).await.unwrap_err();
        assert_eq!(e.transience(), Some(Transience::Dropped), "{e:?}");
    }
}

/// A pipeline as a PUT takes it: from 9.2 a GET adds the read-only `created_date_millis` and
/// `modified_date_millis` (`created_date`/`modified_date` with `?human`; ES PR #130847), which a
/// PUT refuses (Kibana strips them before writing a pipeline back too, kibana PR #230053), so a
/// body read here can be modified and written back. Drift does not depend on this: it compares
/// only the keys the operator writes (`engine::diff::holds`).
fn without_pipeline_dates(mut pipeline: Value) -> Value {
    if let Some(o) = pipeline.as_object_mut() {
        for k in [
            "created_date_millis",
            "modified_date_millis",
            "created_date",
            "modified_date",
        ] {
            o.remove(k);
        }
    }
    pipeline
}

/// The refusals of `_start` that mean "no data to read yet", with Elasticsearch's reason:
/// - 400 `status_exception` "datafeed [x] cannot retrieve data because no index matches
///   datafeed's indices [..]" (`ScrollDataExtractorFactory.create`, ES PR #81069, 8.x on);
/// - 400 `status_exception` "[x] cannot retrieve field [f] because it has no mappings" (the same
///   check before that PR when nothing matches, and in every version when a field the job
///   reads, such as `ml_is_dga.malicious_probability`, is mapped in no matching index yet);
/// - 409 `status_exception` "No node found to start datafeed [x], allocation explanation [cannot
///   start datafeed [x] because index [..] does not exist, is closed, or is still
///   initializing.]" (`DatafeedNodeSelector.checkDatafeedTaskCanBeCreated`; an index that
///   appeared but is not ready yet), or the `DATAFEED_INDEX_NOT_FOUND` code newer versions
///   put in its place.
fn no_data_yet(status: u16, body: &Value) -> Option<String> {
    let reason = body.pointer("/error/reason").and_then(Value::as_str)?;
    let ty = body.pointer("/error/type").and_then(Value::as_str)?;
    if ty != "status_exception" {
        return None;
    }
    let hit = match status {
        400 => {
            reason.contains("because no index matches datafeed's indices")
                || (reason.contains("cannot retrieve field [")
                    && reason.ends_with("because it has no mappings"))
        }
        409 => {
            reason.contains("does not exist, is closed, or is still initializing")
                || reason.contains("DATAFEED_INDEX_NOT_FOUND")
        }
        _ => false,
    };
    hit.then(|| reason.to_string())
}

#[cfg(test)]
mod start_tests {
    use super::no_data_yet;
    use serde_json::json;

    fn body(ty: &str, reason: &str) -> serde_json::Value {
        json!({"error": {"type": ty, "reason": reason}, "status": 400})
    }

    #[test]
    fn pipeline_dates_are_not_part_of_the_body() {
        let read = json!({"processors": [], "created_date_millis": 1, "modified_date_millis": 2, "created_date": "x", "modified_date": "y"});
        assert_eq!(
            super::without_pipeline_dates(read),
            json!({"processors": []})
        );
    }

    #[test]
    fn refusals_for_missing_data_are_told_apart() {
        let r = "datafeed [d] cannot retrieve data because no index matches datafeed's indices [packetbeat-*]";
        assert_eq!(
            no_data_yet(400, &body("status_exception", r)).as_deref(),
            Some(r)
        );
        let r = "[d] cannot retrieve field [@timestamp] because it has no mappings";
        assert!(no_data_yet(400, &body("status_exception", r)).is_some());
        let r = "No node found to start datafeed [d], allocation explanation [cannot start datafeed [d] because index [packetbeat-*] does not exist, is closed, or is still initializing.]";
        assert!(no_data_yet(409, &body("status_exception", r)).is_some());
        // Other refusals stay errors.
        let r = "cannot start datafeed [d] because job [j] is closed";
        assert!(no_data_yet(409, &body("status_exception", r)).is_none());
        let r = "[d] cannot retrieve field [x] because it has no mappings";
        assert!(no_data_yet(400, &body("illegal_argument_exception", r)).is_none());
        assert!(no_data_yet(500, &body("status_exception", "no index matches")).is_none());
    }
}
