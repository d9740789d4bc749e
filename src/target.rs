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

/// Builds the target from a Secret's data (keys documented on `ClusterRef::secret_name`).
pub fn from_secret_data(
    secret_name: &str,
    data: &BTreeMap<String, k8s_openapi::ByteString>,
) -> Result<Target, Error> {
    let invalid = |m: String| Error::SecretInvalid(format!("Secret {secret_name}: {m}"));
    let url = text(data, "url")?
        .ok_or_else(|| invalid("key `url` is missing (the Elasticsearch URL)".into()))?;
    let username = text(data, "username")?;
    let password = text(data, "password")?;
    let api_key = text(data, "api-key")?;
    let token = text(data, "token")?;
    let auth = match (username, password, api_key.or(token.clone())) {
        (_, _, Some(k))
            if token.as_deref() == Some(k.as_str()) && text(data, "api-key")?.is_none() =>
        {
            Auth::Bearer(Sensitive::new(k))
        }
        (_, _, Some(k)) => Auth::ApiKey(Sensitive::new(k)),
        (Some(u), Some(p), None) => Auth::Basic {
            username: u,
            password: Sensitive::new(p),
        },
        (Some(_), None, None) => {
            return Err(invalid(
                "key `username` is set but `password` is missing".into(),
            ));
        }
        (None, Some(_), None) => {
            return Err(invalid(
                "key `password` is set but `username` is missing".into(),
            ));
        }
        (None, None, None) => {
            return Err(invalid(
                "no credentials: set `username` and `password`, `api-key`, or `token` (bearer)"
                    .into(),
            ));
        }
    };
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
    })
}

/// Dereferences a DgaModel's `clusterRef` (and `kibanaRef`).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    r: &ClusterRef,
    kibana_ref: Option<&ObjectRef>,
) -> Result<Target, Error> {
    let mut target = resolve_cluster(client, namespace, r).await?;
    if let Some(k) = kibana_ref {
        target.kibana = Some(
            resolve_eck_kibana(
                client,
                k.namespace.as_deref().unwrap_or(namespace),
                &k.name,
                &target.elasticsearch.auth,
            )
            .await?,
        );
    }
    target.elasticsearch.insecure = r.insecure_skip_tls_verify;
    if let Some(k) = &mut target.kibana {
        k.insecure = r.insecure_skip_tls_verify;
    }
    Ok(target)
}

async fn resolve_cluster(
    client: &Client,
    namespace: &str,
    r: &ClusterRef,
) -> Result<Target, Error> {
    match (&r.secret_name, &r.name) {
        (Some(secret), None) => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let s = api.get_opt(secret).await?.ok_or_else(|| {
                Error::SecretNotFound(format!(
                    "Secret {namespace}/{secret} named in spec.clusterRef.secretName does not exist"
                ))
            })?;
            from_secret_data(secret, &s.data.unwrap_or_default())
        }
        (None, Some(name)) => {
            resolve_eck(client, r.namespace.as_deref().unwrap_or(namespace), name).await
        }
        _ => Err(Error::InvalidSpec(
            "spec.clusterRef: set exactly one of secretName or name".into(),
        )),
    }
}

/// ECK's conventions: `<name>-es-http` service (HTTPS on 9200), the `elastic` user's password in
/// `<name>-es-elastic-user`, the CA in `<name>-es-http-certs-public`.
async fn resolve_eck(client: &Client, namespace: &str, name: &str) -> Result<Target, Error> {
    eck_resource_exists(
        client,
        namespace,
        name,
        "elasticsearch.k8s.elastic.co",
        "Elasticsearch",
        "elasticsearches",
        "spec.clusterRef",
    )
    .await?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let user_secret = format!("{name}-es-elastic-user");
    let s = api.get_opt(&user_secret).await?.ok_or_else(|| {
        Error::SecretNotFound(format!(
            "Secret {namespace}/{user_secret} not found: is spec.clusterRef.name an ECK Elasticsearch in {namespace}?"
        ))
    })?;
    let password = text(&s.data.unwrap_or_default(), "elastic")?.ok_or_else(|| {
        Error::SecretInvalid(format!(
            "Secret {namespace}/{user_secret} has no key `elastic`"
        ))
    })?;
    let ca_secret = format!("{name}-es-http-certs-public");
    let ca = api
        .get_opt(&ca_secret)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()));
    let auth = Auth::Basic {
        username: "elastic".into(),
        password: Sensitive::new(password),
    };
    let scheme = if ca.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{name}-es-http.{namespace}.svc:9200");
    Ok(Target {
        elasticsearch: Endpoint::parse(&url, auth, ca, "url")?,
        kibana: None,
    })
}

/// Checks that the ECK resource exists, so a typo gets a clear message rather than a missing
/// Secret. Public only so tests/eck.rs can point it at a group with no CRD.
#[doc(hidden)]
pub async fn eck_resource_exists(
    client: &Client,
    namespace: &str,
    name: &str,
    group: &str,
    kind: &str,
    plural: &str,
    field: &str,
) -> Result<(), Error> {
    use kube::api::{ApiResource, DynamicObject};
    use kube::core::GroupVersionKind;
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    match api.get_opt(name).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::SecretNotFound(format!(
            "{field}: ECK {kind} {namespace}/{name} not found"
        ))),
        // The CRD is not installed at all.
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::InvalidSpec(format!(
            "{field}: ECK is not installed in this cluster (no {plural}.{group})"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// ECK's Kibana: `<name>-kb-http` (HTTPS on 5601 with the CA in `<name>-kb-http-certs-public`),
/// using the cluster's credentials.
async fn resolve_eck_kibana(
    client: &Client,
    namespace: &str,
    name: &str,
    auth: &Auth,
) -> Result<Endpoint, Error> {
    eck_resource_exists(
        client,
        namespace,
        name,
        "kibana.k8s.elastic.co",
        "Kibana",
        "kibanas",
        "spec.kibanaRef",
    )
    .await?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let ca = api
        .get_opt(&format!("{name}-kb-http-certs-public"))
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()));
    let scheme = if ca.is_some() { "https" } else { "http" };
    Endpoint::parse(
        &format!("{scheme}://{name}-kb-http.{namespace}.svc:5601"),
        auth.clone(),
        ca,
        "kibana-url",
    )
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
