//! The cluster a DgaModel points at: its URLs and credentials, dereferenced from a Secret or an
//! ECK `Elasticsearch` resource. Credentials never reach a log, an event, a status or an error.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::{ClusterRef, ObjectRef};
use crate::error::Error;

/// A secret string whose Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(s: impl Into<String>) -> Self {
        Sensitive(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Sensitive {
    fn from(s: &str) -> Self {
        Sensitive(s.to_string())
    }
}

impl From<String> for Sensitive {
    fn from(s: String) -> Self {
        Sensitive(s)
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    Basic {
        username: String,
        password: Sensitive,
    },
    /// The base64 `id:key` value Elasticsearch returns as `encoded`.
    ApiKey(Sensitive),
    Bearer(Sensitive),
    None,
}

impl Auth {
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Basic { username, password } => req.basic_auth(username, Some(password.expose())),
            Auth::ApiKey(k) => req.header(
                reqwest::header::AUTHORIZATION,
                format!("ApiKey {}", k.expose()),
            ),
            Auth::Bearer(t) => req.bearer_auth(t.expose()),
            Auth::None => req,
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// Base URL without credentials or trailing slash.
    pub url: String,
    pub auth: Auth,
    pub ca_pem: Option<Vec<u8>>,
    /// Certificates are not verified (`clusterRef.insecureSkipTlsVerify`).
    pub insecure: bool,
}

impl Endpoint {
    /// Parses a URL; credentials embedded in it (`https://user:pass@host`) move to basic auth so
    /// that no URL we print carries them.
    pub fn parse(
        raw: &str,
        auth: Auth,
        ca_pem: Option<Vec<u8>>,
        field: &str,
    ) -> Result<Endpoint, Error> {
        let mut url = reqwest::Url::parse(raw.trim())
            .map_err(|e| Error::SecretInvalid(format!("`{field}` is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::SecretInvalid(format!(
                "`{field}` must be an http or https URL"
            )));
        }
        let mut auth = auth;
        if !url.username().is_empty() {
            if auth == Auth::None {
                auth = Auth::Basic {
                    username: url.username().to_string(),
                    password: Sensitive::new(url.password().unwrap_or_default()),
                };
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        Ok(Endpoint {
            url: url.as_str().trim_end_matches('/').to_string(),
            auth,
            ca_pem,
            insecure: false,
        })
    }

    /// Identifies URL and credentials without revealing them (a sha256), for per-cluster caches:
    /// two DgaModels share cached answers only when they connect as the same identity.
    pub fn cache_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.url.as_bytes());
        match &self.auth {
            Auth::Basic { username, password } => {
                h.update(b"\0basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.expose().as_bytes());
            }
            Auth::ApiKey(k) => {
                h.update(b"\0apikey\0");
                h.update(k.expose().as_bytes());
            }
            Auth::Bearer(t) => {
                h.update(b"\0bearer\0");
                h.update(t.expose().as_bytes());
            }
            Auth::None => h.update(b"\0none"),
        }
        if let Some(ca) = &self.ca_pem {
            h.update(ca);
        }
        hex::encode(h.finalize())
    }

    /// An HTTP client for this endpoint: TLS verified against the system roots plus the CA.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, Error> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .user_agent(concat!("dga-operator/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some((host, addr)) = routed(&self.url) {
            b = b.resolve(&host, addr);
        }
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::SecretInvalid(format!("`ca.crt` is not a PEM certificate: {e}"))
            })?;
            if certs.is_empty() {
                return Err(Error::SecretInvalid("`ca.crt` holds no certificate".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build()
            .map_err(|e| Error::SecretInvalid(format!("cannot build an HTTP client: {e}")))
    }
}

/// Elasticsearch, and Kibana when known.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub elasticsearch: Endpoint,
    pub kibana: Option<Endpoint>,
    /// The ECK resource behind `clusterRef.name`, as ECK last reported it.
    pub eck: Option<EckState>,
}

/// What ECK reports about an Elasticsearch (its `status`), for messages while waiting.
#[derive(Clone, Debug, PartialEq)]
pub struct EckState {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub phase: Option<String>,
    pub health: Option<String>,
    pub version: Option<String>,
    /// The Elasticsearch's labels, which a StackConfigPolicy's `resourceSelector` matches.
    pub labels: BTreeMap<String, String>,
}

impl fmt::Display for EckState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
        write!(
            f,
            "ECK reports {} {}/{} phase {}, health {}, version {}",
            self.kind,
            self.namespace,
            self.name,
            v(&self.phase),
            v(&self.health),
            v(&self.version)
        )
    }
}

impl Target {
    /// Adds what ECK says about the cluster to an error that leaves it unreachable, so the
    /// status shows ECK's own view while the operator waits.
    pub fn explain(&self, e: Error) -> Error {
        match (e, &self.eck) {
            (Error::Unreachable { service, detail }, Some(s)) => Error::Unreachable {
                service,
                detail: format!("{detail} ({s})"),
            },
            (e, _) => e,
        }
    }
}

/// Elasticsearch's refusal to touch reserved state, `[<keys>] set as read-only by [<namespace>]`
/// inside a 400 `illegal_argument_exception` ("Failed to process request [...] with errors:
/// [...]"), as `validateForReservedState` words it (elastic/elasticsearch
/// server/src/main/java/org/elasticsearch/reservedstate/ActionWithReservedState.java, 8.4+).
/// Returns the keys and the namespace (`file_settings` for ECK's StackConfigPolicy).
pub fn read_only_keys(detail: &str) -> Option<(Vec<String>, String)> {
    const MARK: &str = "] set as read-only by [";
    let at = detail.find(MARK)?;
    let keys = &detail[..at];
    let keys = &keys[keys.rfind('[')? + 1..];
    let rest = &detail[at + MARK.len()..];
    let namespace = &rest[..rest.find(']')?];
    Some((
        keys.split(", ").map(str::to_string).collect(),
        namespace.to_string(),
    ))
}

impl Target {
    /// Turns a write Elasticsearch refused because file-based settings own the object (or a
    /// Conflict over an object a StackConfigPolicy manages) into a Conflict that names the
    /// StackConfigPolicy, looked up among ECK's; other errors pass unchanged.
    pub async fn explain_reserved(&self, client: &Client, e: Error) -> Error {
        let (what, keys, namespace) = match &e {
            Error::Rejected {
                service: crate::error::Service::Elasticsearch,
                what,
                status: 400,
                detail,
            } => match read_only_keys(detail) {
                Some((keys, ns)) => (what.clone(), keys, Some(ns)),
                None => return e,
            },
            Error::Conflict(m) if self.eck.is_some() => (m.clone(), Vec::new(), None),
            _ => return e,
        };
        let policies = match &self.eck {
            Some(es) => eck::policies_managing(client, es).await,
            None => Err("clusterRef.secretName names no ECK Elasticsearch".to_string()),
        };
        let owners: Vec<String> = match &policies {
            Ok(ps) => ps
                .iter()
                .filter(|p| {
                    if keys.is_empty() {
                        // A Conflict: the objects it names, each in backquotes or as a word.
                        what.split(|c: char| c.is_whitespace() || matches!(c, '`' | ',' | ';'))
                            .any(|w| w == p.key)
                    } else {
                        keys.iter().any(|k| eck::same_key(k, &p.key))
                    }
                })
                .map(|p| p.to_string())
                .collect(),
            Err(_) => Vec::new(),
        };
        match (namespace, owners.is_empty()) {
            // A Conflict no policy explains stays as it was.
            (None, true) => e,
            (None, false) => Error::ReservedState(format!(
                "{what}; {}: Elasticsearch refuses every write to it, so it cannot be taken over",
                owners.join("; ")
            )),
            (Some(ns), false) => Error::ReservedState(format!(
                "{what}: Elasticsearch refuses, [{}] is set as read-only by [{ns}]: {}",
                keys.join(", "),
                owners.join("; ")
            )),
            (Some(ns), true) => Error::ReservedState(format!(
                "{what}: Elasticsearch refuses, [{}] is set as read-only by [{ns}]: a \
                 StackConfigPolicy or other file-based settings own it ({})",
                keys.join(", "),
                match policies {
                    Ok(_) => "no StackConfigPolicy the operator can see manages it".to_string(),
                    Err(why) => why,
                }
            )),
        }
    }
}

impl Target {
    /// Reconciles against the same cluster are serialised on this key.
    pub fn key(&self) -> &str {
        &self.elasticsearch.url
    }
}

fn text(
    data: &BTreeMap<String, k8s_openapi::ByteString>,
    key: &str,
) -> Result<Option<String>, Error> {
    match data.get(key) {
        None => Ok(None),
        Some(b) => String::from_utf8(b.0.clone())
            .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
            .map_err(|_| Error::SecretInvalid(format!("key `{key}` is not UTF-8 text"))),
    }
}

/// The credential keys shared by the cluster Secret and `credentialsSecret`: `username` and
/// `password`, `api-key`, or `token` (bearer). Err: what is wrong, for the caller to place.
fn credentials(data: &BTreeMap<String, k8s_openapi::ByteString>) -> Result<Auth, String> {
    let text = |k: &str| text(data, k).map_err(|e| e.to_string());
    let no_api_key = text("api-key")?.is_none();
    let username = text("username")?;
    let password = text("password")?;
    let api_key = text("api-key")?;
    let token = text("token")?;
    Ok(match (username, password, api_key.or(token.clone())) {
        (_, _, Some(k)) if token.as_deref() == Some(k.as_str()) && no_api_key => {
            Auth::Bearer(Sensitive::new(k))
        }
        (_, _, Some(k)) => Auth::ApiKey(Sensitive::new(k)),
        (Some(u), Some(p), None) => Auth::Basic {
            username: u,
            password: Sensitive::new(p),
        },
        (Some(_), None, None) => {
            return Err("key `username` is set but `password` is missing".into());
        }
        (None, Some(_), None) => {
            return Err("key `password` is set but `username` is missing".into());
        }
        (None, None, None) => {
            return Err(
                "no credentials: set `username` and `password`, `api-key`, or `token` (bearer)"
                    .into(),
            );
        }
    })
}

/// Builds the target from a Secret's data (keys documented on `ClusterRef::secret_name`).
pub fn from_secret_data(
    secret_name: &str,
    data: &BTreeMap<String, k8s_openapi::ByteString>,
) -> Result<Target, Error> {
    let invalid = |m: String| Error::SecretInvalid(format!("Secret {secret_name}: {m}"));
    let url = text(data, "url")?
        .ok_or_else(|| invalid("key `url` is missing (the Elasticsearch URL)".into()))?;
    let auth = credentials(data).map_err(invalid)?;
    let ca = data.get("ca.crt").map(|b| b.0.clone());
    let es = Endpoint::parse(&url, auth.clone(), ca.clone(), "url")
        .map_err(|e| invalid(e.to_string()))?;
    let kibana = match text(data, "kibana-url")? {
        Some(k) => {
            Some(Endpoint::parse(&k, auth, ca, "kibana-url").map_err(|e| invalid(e.to_string()))?)
        }
        None => None,
    };
    Ok(Target {
        elasticsearch: es,
        kibana,
        eck: None,
    })
}

/// A namespaced operator (`--namespace`, the chart's `watchNamespace`) follows no reference into
/// another namespace: it has no cluster-wide grants to check one with (no SubjectAccessReview)
/// or to read one through.
pub fn same_namespace_only(
    home: &str,
    r: &ClusterRef,
    kibana_ref: Option<&ObjectRef>,
) -> Result<(), Error> {
    for (field, ns) in [
        ("spec.clusterRef.namespace", r.namespace.as_deref()),
        (
            "spec.kibanaRef.namespace",
            kibana_ref.and_then(|k| k.namespace.as_deref()),
        ),
    ] {
        if let Some(ns) = ns.filter(|ns| *ns != home) {
            return Err(Error::ReferenceNotAllowed(format!(
                "{field}: `{ns}` is another namespace, and this operator is installed namespaced \
                 (watching only {home}), so it follows no cross-namespace reference; put the \
                 DgaModel in {ns}, or install the operator cluster-wide (where a \
                 SubjectAccessReview decides)"
            )));
        }
    }
    Ok(())
}

/// Dereferences a DgaModel's `clusterRef` (and `kibanaRef`).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    r: &ClusterRef,
    kibana_ref: Option<&ObjectRef>,
) -> Result<Target, Error> {
    let mut target = match (&r.secret_name, &r.name) {
        (Some(secret), None) => {
            if r.credentials_secret.is_some() {
                return Err(Error::InvalidSpec(
                    "spec.clusterRef.credentialsSecret goes with `name` (an ECK Elasticsearch); \
                     with secretName put the credentials in that Secret"
                        .into(),
                ));
            }
            let mut t = from_secret(client, namespace, secret).await?;
            if let Some(k) = kibana_ref {
                let kb = eck::kibana(client, namespace, r, k, None).await?;
                t.kibana = Some(kb.endpoint(t.elasticsearch.auth.clone()));
            }
            t
        }
        (None, Some(name)) => {
            let es = eck::elasticsearch(client, namespace, r, name).await?;
            let kibana = match kibana_ref {
                Some(k) => Some(eck::kibana(client, namespace, r, k, Some(&es)).await?),
                None => eck::kibana_of(client, namespace, r, &es).await?,
            };
            let auth = es.auth.clone();
            Target {
                kibana: kibana.map(|k| k.endpoint(auth)),
                eck: Some(es.state.clone()),
                elasticsearch: es.endpoint,
            }
        }
        _ => {
            return Err(Error::InvalidSpec(
                "spec.clusterRef: set exactly one of secretName or name".into(),
            ));
        }
    };
    target.elasticsearch.insecure = r.insecure_skip_tls_verify;
    if let Some(k) = &mut target.kibana {
        k.insecure = r.insecure_skip_tls_verify;
    }
    Ok(target)
}

async fn from_secret(client: &Client, namespace: &str, secret: &str) -> Result<Target, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let s = api.get_opt(secret).await?.ok_or_else(|| {
        Error::SecretNotFound(format!(
            "Secret {namespace}/{secret} named in spec.clusterRef.secretName does not exist"
        ))
    })?;
    from_secret_data(secret, &s.data.unwrap_or_default())
}

/// An ECK resource type as the API serves it (the group's version is `version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EckKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl EckKind {
    /// `<plural>.<group>`, as RBAC and messages name it.
    pub fn resource(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

/// One ECK object a DgaModel refers to, and the spec field that refers to it (for messages).
#[derive(Clone, Copy, Debug)]
pub struct EckRef<'a> {
    pub kind: EckKind,
    pub namespace: &'a str,
    pub name: &'a str,
    pub field: &'a str,
}

/// Checks that the ECK resource exists, so a typo gets a clear message rather than a missing
/// Secret. Public only so tests/eck.rs can point it at a group with no CRD.
#[doc(hidden)]
pub async fn eck_resource_exists(client: &Client, r: &EckRef<'_>) -> Result<(), Error> {
    eck::get(client, r).await.map(|_| ())
}

// --- host routing (tests) ----------------------------------------------------------------------
/// Host names dialled at a fixed address instead of through DNS. Empty in production; the
/// tests route ECK's `<svc>.<ns>.svc` names (there is no cluster DNS on the test machine) to
/// listeners in front of the stand-in, so the operator's real URL, scheme and TLS checks apply.
static ROUTES: std::sync::LazyLock<std::sync::RwLock<BTreeMap<String, std::net::SocketAddr>>> =
    std::sync::LazyLock::new(Default::default);

#[doc(hidden)]
pub fn route_host(host: &str, addr: std::net::SocketAddr) {
    ROUTES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(host.to_ascii_lowercase(), addr);
}

fn routed(url: &str) -> Option<(String, std::net::SocketAddr)> {
    let host = reqwest::Url::parse(url)
        .ok()?
        .host_str()?
        .to_ascii_lowercase();
    let routes = ROUTES.read().unwrap_or_else(|e| e.into_inner());
    routes.get(&host).map(|a| (host, *a))
}
// --- end host routing --------------------------------------------------------------------------

/// ECK's layout, read from ECK's own objects (elastic/cloud-on-k8s, checked at commit
/// 7b93383d8ec1569ba99bdf9e59ad70a813fe99f8; see tests/fixtures/eck/SOURCE.md).
mod eck {
    use super::*;
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
    use kube::core::GroupVersionKind;
    use serde_json::Value;

    use crate::target::EckState;

    use crate::target::{EckKind, EckRef};

    // Group, version, kind and plural from ECK's CRDs (tests/fixtures/eck/all-crds.yaml).
    pub const ES: EckKind = EckKind {
        group: "elasticsearch.k8s.elastic.co",
        version: "v1",
        kind: "Elasticsearch",
        plural: "elasticsearches",
    };
    pub const KB: EckKind = EckKind {
        group: "kibana.k8s.elastic.co",
        version: "v1",
        kind: "Kibana",
        plural: "kibanas",
    };
    pub const SCP: EckKind = EckKind {
        group: "stackconfigpolicy.k8s.elastic.co",
        version: "v1alpha1",
        kind: "StackConfigPolicy",
        plural: "stackconfigpolicies",
    };

    pub fn api(client: &Client, namespace: Option<&str>, k: EckKind) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(k.group, k.version, k.kind),
            k.plural,
        );
        match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        }
    }

    pub async fn get(client: &Client, r: &EckRef<'_>) -> Result<DynamicObject, Error> {
        let EckRef {
            kind: k,
            namespace,
            name,
            field,
        } = *r;
        match api(client, Some(namespace), k).get_opt(name).await {
            Ok(Some(o)) => Ok(o),
            Ok(None) => Err(Error::SecretNotFound(format!(
                "{field}: ECK {} {namespace}/{name} not found",
                k.kind
            ))),
            // The CRD is not installed at all.
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::InvalidSpec(format!(
                "{field}: ECK is not installed in this cluster (no {})",
                k.resource()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// One object a StackConfigPolicy puts into an Elasticsearch's file-based settings.
    pub struct Managed {
        pub policy: String,
        pub field: &'static str,
        pub key: String,
        /// Set when the policy sits in another namespace than the cluster.
        pub other_namespace: bool,
    }

    impl std::fmt::Display for Managed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "StackConfigPolicy {} manages `{}` ({})",
                self.policy, self.key, self.field
            )?;
            if self.other_namespace {
                // pkg/controller/stackconfigpolicy: a policy applies across namespaces only
                // from ECK's own namespace.
                f.write_str(" if its namespace is ECK's operator namespace")?;
            }
            Ok(())
        }
    }

    /// Elasticsearch names a composable template `composable_index_template:<name>` and a
    /// component template `component_template:<name>` in newer versions, `<name>` before.
    pub fn same_key(es_key: &str, policy_key: &str) -> bool {
        let bare = es_key
            .strip_prefix("composable_index_template:")
            .or_else(|| es_key.strip_prefix("component_template:"))
            .unwrap_or(es_key);
        bare == policy_key
    }

    /// Kubernetes label-selector semantics (matchLabels and matchExpressions).
    fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
        let labels_ok = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
        let exprs_ok = selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|x| {
                let have = x["key"].as_str().and_then(|k| labels.get(k));
                let values: Vec<&str> = x["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                match x["operator"].as_str() {
                    Some("In") => have.is_some_and(|h| values.contains(&h.as_str())),
                    Some("NotIn") => have.is_none_or(|h| !values.contains(&h.as_str())),
                    Some("Exists") => have.is_some(),
                    Some("DoesNotExist") => have.is_none(),
                    _ => false,
                }
            });
        labels_ok && exprs_ok
    }

    /// The pipelines and templates ECK's StackConfigPolicies put into this cluster's file-based
    /// settings: policies whose `resourceSelector` matches its labels, in its namespace or
    /// another (ECK's operator namespace applies to all). Err: why they cannot be listed.
    pub async fn policies_managing(client: &Client, es: &EckState) -> Result<Vec<Managed>, String> {
        let listed = match api(client, None, SCP).list(&ListParams::default()).await {
            // A namespaced operator may list only where it works.
            Err(kube::Error::Api(s)) if s.code == 403 => {
                api(client, Some(&es.namespace), SCP)
                    .list(&ListParams::default())
                    .await
            }
            other => other,
        };
        let list = match listed {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(format!("no {} in this cluster", SCP.resource()));
            }
            Err(e) => return Err(format!("cannot list {}: {e}", SCP.resource())),
        };
        let mut out = Vec::new();
        for p in list.items {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let spec = &p.data["spec"];
            if !selects(&spec["resourceSelector"], &es.labels) {
                continue;
            }
            let policy = format!("{ns}/{}", p.metadata.name.clone().unwrap_or_default());
            let es_spec = &spec["elasticsearch"];
            for (field, map) in [
                (
                    "spec.elasticsearch.ingestPipelines",
                    &es_spec["ingestPipelines"],
                ),
                (
                    "spec.elasticsearch.indexTemplates.composableIndexTemplates",
                    &es_spec["indexTemplates"]["composableIndexTemplates"],
                ),
                (
                    "spec.elasticsearch.indexTemplates.componentTemplates",
                    &es_spec["indexTemplates"]["componentTemplates"],
                ),
            ] {
                for key in map.as_object().into_iter().flatten().map(|(k, _)| k) {
                    out.push(Managed {
                        policy: policy.clone(),
                        field,
                        key: key.clone(),
                        other_namespace: ns != es.namespace,
                    });
                }
            }
        }
        // The cluster's own namespace first: that policy applies for certain.
        out.sort_by_key(|m| m.other_namespace);
        Ok(out)
    }

    /// ECK's `HTTPConfig.Protocol()` (pkg/apis/common/v1/common.go): https unless the
    /// self-signed certificate is disabled and no certificate Secret is given.
    pub fn protocol(spec: &Value) -> &'static str {
        let tls = &spec["http"]["tls"];
        let self_signed_disabled = tls["selfSignedCertificate"]["disabled"].as_bool() == Some(true);
        let user_certificate = tls["certificate"]["secretName"]
            .as_str()
            .is_some_and(|s| !s.is_empty());
        if !self_signed_disabled || user_certificate {
            "https"
        } else {
            "http"
        }
    }

    /// ECK's own cross-namespace check (pkg/utils/rbac/access_review.go): the referencing
    /// side's ServiceAccount must be allowed to `get` the referenced object; same namespace is
    /// always allowed.
    pub async fn check_access(
        client: &Client,
        from_ns: &str,
        r: &ClusterRef,
        target: &EckRef<'_>,
    ) -> Result<(), Error> {
        let EckRef {
            kind: k,
            namespace,
            name,
            field,
        } = *target;
        let (group, kind, plural) = (k.group, k.kind, k.plural);
        if from_ns == namespace {
            return Ok(());
        }
        let sa = r.service_account_name.as_deref().unwrap_or("default");
        let valid = !sa.is_empty()
            && sa.len() <= 253
            && sa
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !sa.starts_with(['-', '.'])
            && !sa.ends_with(['-', '.']);
        if !valid {
            return Err(Error::InvalidSpec(format!(
                "spec.clusterRef.serviceAccountName `{sa}` is not a valid ServiceAccount name"
            )));
        }
        let user = format!("system:serviceaccount:{from_ns}:{sa}");
        let sar: SubjectAccessReview = serde_json::from_value(serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "resourceAttributes": {
                    "namespace": namespace, "verb": "get", "group": group, "version": k.version,
                    "resource": plural, "name": name,
                },
            },
        }))
        .map_err(|e| Error::Internal(e.to_string()))?;
        let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
        let answer = match reviews.create(&PostParams::default(), &sar).await {
            Ok(a) => a,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(Error::ReferenceNotAllowed(format!(
                    "{field}: {kind} {namespace}/{name} is in another namespace and the operator \
                     may not create subjectaccessreviews to check that {user} may reach it \
                     (a namespaced install follows no cross-namespace reference)"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let status = answer.status.unwrap_or_default();
        if status.allowed && status.denied != Some(true) {
            return Ok(());
        }
        Err(Error::ReferenceNotAllowed(format!(
            "{field}: {user} may not `get` {plural}.{group} {namespace}/{name}, so this DgaModel \
             may not use it; grant that (a Role in {namespace} with verbs [get] on {plural} \
             {name}, bound to that ServiceAccount) or set spec.clusterRef.serviceAccountName to \
             one that has it"
        )))
    }

    /// The port named for the protocol in ECK's HTTP Service, as ECK's associations read it
    /// (pkg/controller/association/service.go `findPortFor`).
    async fn service_url(
        client: &Client,
        namespace: &str,
        service: &str,
        protocol: &str,
        base_path: &str,
    ) -> Result<String, Error> {
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        let svc = api.get_opt(service).await?.ok_or_else(|| {
            Error::WaitingForEck(format!(
                "waiting for ECK to create the Service {namespace}/{service}"
            ))
        })?;
        let port = svc
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name.as_deref() == Some(protocol))
            .map(|p| p.port)
            .ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "no port named [{protocol}] in Service {namespace}/{service} (ECK names the \
                     HTTP port after the protocol; keep that name in spec.http.service)"
                ))
            })?;
        Ok(format!(
            "{protocol}://{service}.{namespace}.svc:{port}{base_path}"
        ))
    }

    /// The CA to trust for an https endpoint: `ca.crt` of ECK's public certs Secret, or its
    /// `tls.crt` when a user-provided certificate came without a CA (ECK then publishes only
    /// that, pkg/controller/common/certificates/http_reconcile.go). None yet: wait.
    async fn public_ca(
        client: &Client,
        namespace: &str,
        secret: &str,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let data = api
            .get_opt(secret)
            .await?
            .and_then(|s| s.data)
            .unwrap_or_default();
        data.get("ca.crt")
            .or_else(|| data.get("tls.crt"))
            .map(|b| b.0.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                Error::WaitingForEck(format!(
                    "waiting for ECK to publish the certificate of {what} in Secret \
                     {namespace}/{secret} (its spec.http serves https): nothing is sent before"
                ))
            })
    }

    fn state(obj: &DgaModelLike) -> EckState {
        let st = &obj.data["status"];
        let s = |k: &str| st[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        EckState {
            kind: "Elasticsearch",
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            phase: s("phase"),
            health: s("health"),
            version: s("version"),
            labels: obj.metadata.labels.clone().unwrap_or_default(),
        }
    }
    type DgaModelLike = DynamicObject;

    pub struct ResolvedEs {
        pub endpoint: Endpoint,
        pub auth: Auth,
        pub state: EckState,
    }

    pub async fn elasticsearch(
        client: &Client,
        home: &str,
        r: &ClusterRef,
        name: &str,
    ) -> Result<ResolvedEs, Error> {
        let namespace = r.namespace.as_deref().unwrap_or(home);
        let target = EckRef {
            kind: ES,
            namespace,
            name,
            field: "spec.clusterRef",
        };
        // Who may reach the cluster is decided before anything of it is read.
        check_access(client, home, r, &target).await?;
        let obj = get(client, &target).await?;
        let state = state(&obj);
        let spec = &obj.data["spec"];
        let protocol = protocol(spec);
        let auth = match &r.credentials_secret {
            Some(secret) => credentials(client, home, secret).await?,
            None => elastic_user(client, namespace, name, spec, &state).await?,
        };
        let url = service_url(client, namespace, &format!("{name}-es-http"), protocol, "")
            .await
            .map_err(|e| with_state(e, &state))?;
        let ca = match protocol {
            "https" => Some(
                public_ca(
                    client,
                    namespace,
                    &format!("{name}-es-http-certs-public"),
                    &format!("Elasticsearch {namespace}/{name}"),
                )
                .await
                .map_err(|e| with_state(e, &state))?,
            ),
            _ => None,
        };
        Ok(ResolvedEs {
            endpoint: Endpoint::parse(&url, auth.clone(), ca, "url")?,
            auth,
            state,
        })
    }

    /// Adds what ECK reports about the cluster to a waiting message.
    fn with_state(e: Error, state: &EckState) -> Error {
        match e {
            Error::WaitingForEck(m) => Error::WaitingForEck(format!("{m}; {state}")),
            other => other,
        }
    }

    async fn credentials(client: &Client, home: &str, secret: &str) -> Result<Auth, Error> {
        let api: Api<Secret> = Api::namespaced(client.clone(), home);
        let s = api.get_opt(secret).await?.ok_or_else(|| {
            Error::SecretNotFound(format!(
                "Secret {home}/{secret} named in spec.clusterRef.credentialsSecret does not exist"
            ))
        })?;
        super::credentials(&s.data.unwrap_or_default()).map_err(|m| {
            Error::SecretInvalid(format!(
                "Secret {home}/{secret} (spec.clusterRef.credentialsSecret): {m}"
            ))
        })
    }

    /// The `elastic` user ECK generates. ECK writes none with `spec.auth.disableElasticUser`
    /// (ECK 2.13+) or when a file-realm user takes the name `elastic`.
    async fn elastic_user(
        client: &Client,
        namespace: &str,
        name: &str,
        spec: &Value,
        state: &EckState,
    ) -> Result<Auth, Error> {
        let secret = format!("{name}-es-elastic-user");
        let advice = "set spec.clusterRef.credentialsSecret to a Secret in the DgaModel's \
                      namespace with a least-privilege user (README: ECK file realm and roles)";
        if spec["auth"]["disableElasticUser"].as_bool() == Some(true) {
            return Err(Error::InvalidSpec(format!(
                "ECK Elasticsearch {namespace}/{name} has spec.auth.disableElasticUser, so ECK \
                 writes no `elastic` user: {advice}"
            )));
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let Some(s) = api.get_opt(&secret).await? else {
            // Once ECK reports the cluster Ready it has written every Secret it means to.
            if state.phase.as_deref() == Some("Ready") {
                return Err(Error::InvalidSpec(format!(
                    "ECK wrote no Secret {namespace}/{secret} though Elasticsearch \
                     {namespace}/{name} is Ready (a file-realm `elastic` user?): {advice}"
                )));
            }
            return Err(Error::WaitingForEck(format!(
                "waiting for ECK to create Secret {namespace}/{secret}; {state}"
            )));
        };
        let password = text(&s.data.unwrap_or_default(), "elastic")?.ok_or_else(|| {
            Error::SecretInvalid(format!("Secret {namespace}/{secret} has no key `elastic`"))
        })?;
        Ok(Auth::Basic {
            username: "elastic".into(),
            password: Sensitive::new(password),
        })
    }

    pub struct ResolvedKb {
        url: String,
        ca: Option<Vec<u8>>,
    }

    impl ResolvedKb {
        pub fn endpoint(self, auth: Auth) -> Endpoint {
            Endpoint {
                url: self.url.trim_end_matches('/').to_string(),
                auth,
                ca_pem: self.ca,
                insecure: false,
            }
        }
    }

    /// Kibana's `elasticsearchRef` as (namespace, name); the namespace defaults to Kibana's.
    fn es_ref(kb: &DynamicObject) -> Option<(String, String)> {
        let r = &kb.data["spec"]["elasticsearchRef"];
        let name = r["name"].as_str().filter(|s| !s.is_empty())?;
        let ns = r["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| kb.metadata.namespace.clone())?;
        Some((ns, name.to_string()))
    }

    /// ECK's `GetKibanaBasePath` (pkg/controller/kibana/pod.go): the base path counts only with
    /// rewriteBasePath, from the `kibana` container's env or else from spec.config.
    pub fn base_path(spec: &Value) -> String {
        let env: BTreeMap<&str, &str> = spec["podTemplate"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == "kibana")
            .flat_map(|c| c["env"].as_array().into_iter().flatten())
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str().unwrap_or(""))))
            .collect();
        if let Some(rewrite) = env.get("SERVER_REWRITEBASEPATH") {
            return if rewrite.eq_ignore_ascii_case("true") {
                env.get("SERVER_BASEPATH").unwrap_or(&"").to_string()
            } else {
                String::new()
            };
        }
        let config = &spec["config"];
        // Kibana's config takes dotted keys or nested objects alike.
        let setting = |k: &str| {
            let dotted = &config[format!("server.{k}")];
            if dotted.is_null() {
                config["server"][k].clone()
            } else {
                dotted.clone()
            }
        };
        if setting("rewriteBasePath").as_bool() == Some(true) {
            setting("basePath")
                .as_str()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string()
        } else {
            String::new()
        }
    }

    async fn endpoint_of(client: &Client, kb: &DynamicObject) -> Result<ResolvedKb, Error> {
        let namespace = kb.metadata.namespace.clone().unwrap_or_default();
        let name = kb.metadata.name.clone().unwrap_or_default();
        let spec = &kb.data["spec"];
        let protocol = protocol(spec);
        let url = service_url(
            client,
            &namespace,
            &format!("{name}-kb-http"),
            protocol,
            &base_path(spec),
        )
        .await?;
        let ca = match protocol {
            "https" => Some(
                public_ca(
                    client,
                    &namespace,
                    &format!("{name}-kb-http-certs-public"),
                    &format!("Kibana {namespace}/{name}"),
                )
                .await?,
            ),
            _ => None,
        };
        Ok(ResolvedKb { url, ca })
    }

    /// The Kibana named by `kibanaRef`; with an ECK cluster it must reference that cluster.
    pub async fn kibana(
        client: &Client,
        home: &str,
        r: &ClusterRef,
        k: &ObjectRef,
        es: Option<&ResolvedEs>,
    ) -> Result<ResolvedKb, Error> {
        let namespace = k.namespace.as_deref().unwrap_or(home);
        let target = EckRef {
            kind: KB,
            namespace,
            name: &k.name,
            field: "spec.kibanaRef",
        };
        check_access(client, home, r, &target).await?;
        let kb = get(client, &target).await?;
        if let Some(es) = es {
            let want = (es.state.namespace.clone(), es.state.name.clone());
            match es_ref(&kb) {
                Some(got) if got == want => {}
                got => {
                    return Err(Error::InvalidSpec(format!(
                        "spec.kibanaRef: Kibana {namespace}/{} belongs to {}, not to the \
                         spec.clusterRef Elasticsearch {}/{}",
                        k.name,
                        got.map(|(n, e)| format!("Elasticsearch {n}/{e}"))
                            .unwrap_or_else(|| {
                                "no ECK Elasticsearch (no spec.elasticsearchRef.name)".into()
                            }),
                        want.0,
                        want.1
                    )));
                }
            }
        }
        endpoint_of(client, &kb).await
    }

    /// Without `kibanaRef`: the ECK Kibana whose `elasticsearchRef` names the cluster, looked
    /// for in the cluster's namespace and the DgaModel's.
    pub async fn kibana_of(
        client: &Client,
        home: &str,
        r: &ClusterRef,
        es: &ResolvedEs,
    ) -> Result<Option<ResolvedKb>, Error> {
        let want = (es.state.namespace.clone(), es.state.name.clone());
        let mut namespaces = vec![want.0.clone()];
        if home != want.0 {
            namespaces.push(home.to_string());
        }
        let mut found = Vec::new();
        for ns in namespaces {
            let list = match api(client, Some(&ns), KB)
                .list(&ListParams::default())
                .await
            {
                Ok(l) => l,
                // No Kibana CRD: no Kibana.
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            found.extend(
                list.items
                    .into_iter()
                    .filter(|kb| es_ref(kb).as_ref() == Some(&want)),
            );
        }
        match found.len() {
            0 => Ok(None),
            1 => {
                let kb = found.remove(0);
                let (ns, name) = (
                    kb.metadata.namespace.clone().unwrap_or_default(),
                    kb.metadata.name.clone().unwrap_or_default(),
                );
                let target = EckRef {
                    kind: KB,
                    namespace: &ns,
                    name: &name,
                    field: "the ECK Kibana of spec.clusterRef",
                };
                check_access(client, home, r, &target).await?;
                endpoint_of(client, &kb).await.map(Some)
            }
            _ => Err(Error::InvalidSpec(format!(
                "several ECK Kibanas reference Elasticsearch {}/{} ({}): name one in spec.kibanaRef",
                want.0,
                want.1,
                found
                    .iter()
                    .map(|k| format!(
                        "{}/{}",
                        k.metadata.namespace.clone().unwrap_or_default(),
                        k.metadata.name.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, k8s_openapi::ByteString> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect()
    }

    #[test]
    fn secret_keys() {
        let t = from_secret_data(
            "es",
            &data(&[
                ("url", "https://es:9200/"),
                ("username", "u"),
                ("password", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(t.elasticsearch.url, "https://es:9200");
        assert!(t.kibana.is_none());
        let t = from_secret_data(
            "es",
            &data(&[
                ("url", "http://es"),
                ("api-key", "a2V5"),
                ("kibana-url", "http://kb:5601"),
            ]),
        )
        .unwrap();
        assert!(matches!(t.elasticsearch.auth, Auth::ApiKey(_)));
        assert_eq!(t.kibana.unwrap().url, "http://kb:5601");
        let t =
            from_secret_data("es", &data(&[("url", "http://es"), ("token", "svc-token")])).unwrap();
        assert!(matches!(t.elasticsearch.auth, Auth::Bearer(_)));
        for (bad, needle) in [
            (vec![("username", "u"), ("password", "p")], "`url`"),
            (vec![("url", "http://es")], "no credentials"),
            (vec![("url", "http://es"), ("username", "u")], "`password`"),
            (
                vec![("url", "ftp://es"), ("username", "u"), ("password", "p")],
                "http or https",
            ),
        ] {
            let e = from_secret_data("es", &data(&bad)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn read_only_keys_as_elasticsearch_words_them() {
        // The message of ActionWithReservedState.validateForReservedState, from
        // elastic/elasticsearch's ingest pipeline file-settings test.
        let d = "illegal_argument_exception: Failed to process request \
                 [org.elasticsearch.action.ingest.PutPipelineRequest/unset] with errors: \
                 [[my_ingest_pipeline] set as read-only by [file_settings]]";
        assert_eq!(
            read_only_keys(d),
            Some((vec!["my_ingest_pipeline".into()], "file_settings".into()))
        );
        let d = "with errors: [[a, b] set as read-only by [namespace_one]]";
        assert_eq!(
            read_only_keys(d),
            Some((vec!["a".into(), "b".into()], "namespace_one".into()))
        );
        assert_eq!(read_only_keys("version conflict"), None);
        assert!(eck::same_key("composable_index_template:t1", "t1"));
        assert!(!eck::same_key("t2", "t1"));
    }

    #[test]
    fn credentials_in_urls_move_to_auth_and_never_print() {
        let t = from_secret_data(
            "es",
            &data(&[
                ("url", "https://bob:s3cr3t@es:9200"),
                ("username", ""),
                ("password", ""),
            ]),
        );
        // Empty username/password keys count as absent; the URL's userinfo becomes the auth.
        let e = Endpoint::parse("https://bob:s3cr3t@es:9200", Auth::None, None, "url").unwrap();
        assert_eq!(e.url, "https://es:9200");
        assert!(!format!("{e:?}").contains("s3cr3t"));
        assert!(t.is_err(), "no explicit credentials");
    }
}
