//! ECK on the real apiserver, as ECK lays a cluster out: ECK's own CRDs (vendored from
//! elastic/cloud-on-k8s, tests/fixtures/eck/SOURCE.md) and the objects, Secrets and Services ECK
//! writes for an `Elasticsearch` or `Kibana`. There is no cluster DNS here, so `route` puts a
//! listener for `<svc>.<ns>.svc` on a loopback address of its own (at ECK's port, TLS where ECK
//! serves TLS) in front of the stand-in, and logs every plaintext request that carries an
//! `Authorization` header. Shared by tests/eck.rs and tests/rbac.rs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ES_GROUP: &str = "elasticsearch.k8s.elastic.co";
pub const KB_GROUP: &str = "kibana.k8s.elastic.co";
/// The ECK CRDs these tests need, out of the vendored all-crds.yaml.
const CRDS: &[&str] = &[
    "elasticsearches.elasticsearch.k8s.elastic.co",
    "kibanas.kibana.k8s.elastic.co",
    "stackconfigpolicies.stackconfigpolicy.k8s.elastic.co",
];

pub fn es_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(ES_GROUP, "v1", "Elasticsearch"),
        "elasticsearches",
    )
}

pub fn scp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "stackconfigpolicy.k8s.elastic.co",
            "v1alpha1",
            "StackConfigPolicy",
        ),
        "stackconfigpolicies",
    )
}

pub fn kb_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(KB_GROUP, "v1", "Kibana"), "kibanas")
}

/// Applies ECK's real CRDs (server-side apply, so parallel tests agree) and waits until served.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/eck/all-crds.yaml"
    ))
    .expect("vendored ECK CRDs");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("CRD YAML");
        let Some(name) = v["metadata"]["name"].as_str() else {
            continue;
        };
        if !CRDS.contains(&name) || crds.get_opt(name).await.expect("read CRDs").is_some() {
            continue;
        }
        let crd: CustomResourceDefinition = serde_json::from_value(v.clone()).expect("a CRD");
        crds.patch(
            name,
            &PatchParams::apply("dga-tests-eck").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply ECK CRD {name}: {e}"));
    }
    for ar in [es_resource(), kb_resource(), scp_resource()] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let served = super::support::wait_for(Duration::from_secs(60), || async {
            api.list(&Default::default()).await.ok().map(|_| ())
        })
        .await;
        assert!(served.is_some(), "{} not served", ar.plural);
    }
}

/// ECK's labels on what it creates for a cluster (pkg/controller/elasticsearch/label).
fn es_labels(name: &str) -> Value {
    json!({"common.k8s.elastic.co/type": "elasticsearch", "elasticsearch.k8s.elastic.co/cluster-name": name})
}

fn kb_labels(name: &str) -> Value {
    json!({"common.k8s.elastic.co/type": "kibana", "kibana.k8s.elastic.co/name": name})
}

fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e.clone(),
    }
}

/// An `Elasticsearch` as a user writes it for ECK (nodeSets required by ECK's CRD), plus `extra`.
pub async fn es_object(client: &Client, ns: &str, name: &str, extra: Value) {
    let mut spec = json!({
        "version": "8.17.0",
        "nodeSets": [{"name": "default", "count": 1, "config": {"node.store.allow_mmap": false}}],
    });
    merge(&mut spec, &extra);
    create(client, ns, &es_resource(), name, spec).await;
}

/// A `Kibana` referencing `es` (namespace, name), plus `extra`.
pub async fn kb_object(client: &Client, ns: &str, name: &str, es: (&str, &str), extra: Value) {
    let mut spec = json!({"version": "8.17.0", "count": 1, "elasticsearchRef": {"name": es.1}});
    if es.0 != ns {
        spec["elasticsearchRef"]["namespace"] = es.0.into();
    }
    merge(&mut spec, &extra);
    create(client, ns, &kb_resource(), name, spec).await;
}

async fn create(client: &Client, ns: &str, ar: &ApiResource, name: &str, spec: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create ECK {} {ns}/{name}: {e}", ar.kind));
}

/// ECK's status of an Elasticsearch (pkg/apis/elasticsearch/v1/status.go).
pub async fn es_status(client: &Client, ns: &str, name: &str, phase: &str, health: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &es_resource());
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase, "health": health, "version": "8.17.0", "availableNodes": 1}})),
    )
    .await
    .expect("ECK status");
}

pub async fn secret_map(
    client: &Client,
    ns: &str,
    name: &str,
    type_: Option<&str>,
    labels: Value,
    data: BTreeMap<&str, Vec<u8>>,
) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<&str, String> = data
        .into_iter()
        .map(|(k, v)| (k, base64_encode(&v)))
        .collect();
    let mut s =
        json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data});
    if let Some(t) = type_ {
        s["type"] = t.into();
    }
    api.create(&PostParams::default(), &serde_json::from_value(s).unwrap())
        .await
        .expect("create Secret");
}

pub async fn secret(client: &Client, ns: &str, name: &str, key: &str, value: &[u8]) {
    secret_map(
        client,
        ns,
        name,
        None,
        json!({}),
        BTreeMap::from([(key, value.to_vec())]),
    )
    .await;
}

/// ECK's HTTP Service: one port named after the protocol (services.go `NewExternalService`).
pub async fn service(
    client: &Client,
    ns: &str,
    name: &str,
    labels: Value,
    port_name: &str,
    port: i32,
) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let s: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": labels, "ports": [{"name": port_name, "port": port, "protocol": "TCP", "targetPort": port}]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &s)
        .await
        .expect("create Service");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `host` signed by it, made by openssl for this test.
#[derive(Clone)]
pub struct Tls {
    pub ca: Vec<u8>,
    /// The server certificate followed by the CA (what ECK publishes as `tls.crt`).
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl Tls {
    pub fn new(host: &str) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=dga-tests-ca",
            "-keyout",
        ];
        let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
        ca.extend([ca_key.as_str(), "-out", ca_crt.as_str()]);
        ca.extend(ec);
        openssl(&ca);
        let (key, csr, crt, ext) = (p("tls.key"), p("tls.csr"), p("tls.crt"), p("ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        let mut req = vec![
            "req",
            "-new",
            "-subj",
            "/CN=dga-tests",
            "-keyout",
            key.as_str(),
            "-out",
            csr.as_str(),
        ];
        req.extend(ec);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        let ca = std::fs::read(&ca_crt).unwrap();
        let mut chain = std::fs::read(&crt).unwrap();
        chain.extend_from_slice(&ca);
        Tls {
            ca,
            chain,
            key: std::fs::read(&key).unwrap(),
        }
    }
}

/// A self-signed CA certificate (PEM).
pub fn ca_pem(cn: &str) -> Vec<u8> {
    Tls::new(cn).ca
}

// --- routing ---------------------------------------------------------------------------------

/// Every plaintext request carrying `Authorization` that any route saw: the host it was for.
static PLAINTEXT_AUTH: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn plaintext_authorizations() -> Vec<String> {
    PLAINTEXT_AUTH.lock().unwrap().clone()
}

/// Routes `host` (the operator dials `host:port` from ECK's URL) to `backend` (a stand-in port):
/// a listener on a loopback address of its own at `port`, speaking TLS with `tls` when the first
/// byte is a TLS handshake and otherwise forwarding plaintext while logging any `Authorization`.
pub async fn route(host: &str, port: u16, backend: SocketAddr, tls: Option<&Tls>) {
    let listener = loop {
        let ip = Ipv4Addr::new(
            127,
            rand::random_range(1..=254),
            rand::random(),
            rand::random_range(1..=254),
        );
        if let Ok(l) = tokio::net::TcpListener::bind((ip, port)).await {
            break l;
        }
    };
    let ip: IpAddr = listener.local_addr().unwrap().ip();
    dga_operator::target::route_host(host, SocketAddr::new(ip, 0));
    let acceptor = tls.map(|t| {
        use rustls_pki_types::pem::PemObject;
        use tokio_rustls::rustls;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&t.chain)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&t.key).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let host = host.to_string();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (acceptor, host) = (acceptor.clone(), host.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if conn.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                match acceptor {
                    Some(a) if first[0] == 0x16 => {
                        if let Ok(mut tls) = a.accept(conn).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                        }
                    }
                    _ => plaintext(conn, up, host).await,
                }
            });
        }
    });
}

async fn plaintext(conn: tokio::net::TcpStream, up: tokio::net::TcpStream, host: String) {
    let (mut cr, mut cw) = conn.into_split();
    let (mut ur, mut uw) = up.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Header names are case-insensitive; a header starts a line.
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&buf[..n]);
        let lower = window.to_ascii_lowercase();
        const NEEDLE: &[u8] = b"\nauthorization:";
        let hits = lower.windows(NEEDLE.len()).filter(|w| *w == NEEDLE).count();
        for _ in 0..hits {
            PLAINTEXT_AUTH.lock().unwrap().push(host.clone());
        }
        // Keep one byte short of a needle, so a header split across reads is seen exactly once.
        tail = window[window.len().saturating_sub(NEEDLE.len() - 1)..].to_vec();
        if uw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = uw.shutdown().await;
    let _ = down.await;
}

// --- what ECK writes -------------------------------------------------------------------------

/// An ECK Elasticsearch laid out as ECK leaves it by default (TLS with ECK's self-signed CA, the
/// `elastic` user, the `https` port 9200), routed to `backend` when given. Returns (password,
/// the TLS material).
pub async fn quickstart_routed(
    client: &Client,
    ns: &str,
    name: &str,
    backend: Option<SocketAddr>,
    password: &str,
) -> Tls {
    es_object(client, ns, name, json!({})).await;
    es_status(client, ns, name, "Ready", "green").await;
    secret_map(
        client,
        ns,
        &format!("{name}-es-elastic-user"),
        None,
        es_labels(name),
        BTreeMap::from([("elastic", password.as_bytes().to_vec())]),
    )
    .await;
    let host = format!("{name}-es-http.{ns}.svc");
    let tls = Tls::new(&host);
    secret_map(
        client,
        ns,
        &format!("{name}-es-http-certs-public"),
        None,
        es_labels(name),
        BTreeMap::from([("ca.crt", tls.ca.clone()), ("tls.crt", tls.chain.clone())]),
    )
    .await;
    service(
        client,
        ns,
        &format!("{name}-es-http"),
        es_labels(name),
        "https",
        9200,
    )
    .await;
    if let Some(b) = backend {
        route(&host, 9200, b, Some(&tls)).await;
    }
    tls
}

/// What ECK creates for an `Elasticsearch` named `name` (not routed). Returns (password, CA PEM).
pub async fn quickstart(client: &Client, ns: &str, name: &str) -> (String, Vec<u8>) {
    let password = format!("pw-{:08x}", rand::random::<u32>());
    let tls = quickstart_routed(client, ns, name, None, &password).await;
    (password, tls.ca)
}

/// An ECK Kibana of Elasticsearch `es` (namespace, name), TLS by default, routed when given.
/// Returns the CA PEM.
pub async fn kibana_routed(
    client: &Client,
    ns: &str,
    name: &str,
    es: (&str, &str),
    extra: Value,
    backend: Option<SocketAddr>,
) -> Vec<u8> {
    kb_object(client, ns, name, es, extra).await;
    let host = format!("{name}-kb-http.{ns}.svc");
    let tls = Tls::new(&host);
    secret_map(
        client,
        ns,
        &format!("{name}-kb-http-certs-public"),
        None,
        kb_labels(name),
        BTreeMap::from([("ca.crt", tls.ca.clone()), ("tls.crt", tls.chain.clone())]),
    )
    .await;
    service(
        client,
        ns,
        &format!("{name}-kb-http"),
        kb_labels(name),
        "https",
        5601,
    )
    .await;
    if let Some(b) = backend {
        route(&host, 5601, b, Some(&tls)).await;
    }
    tls.ca
}

pub async fn kibana(client: &Client, ns: &str, name: &str, es: (&str, &str)) -> Vec<u8> {
    kibana_routed(client, ns, name, es, json!({}), None).await
}

pub fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("stand-in address")
}

/// An ECK-shaped `Elasticsearch` (nodeSets) or `Kibana` (of Elasticsearch `quickstart`) with
/// nothing else: what exists before ECK has written any Secret or Service.
pub async fn create_object(client: &Client, ns: &str, ar: &ApiResource, name: &str) {
    if ar.kind == "Kibana" {
        kb_object(client, ns, name, (ns, "quickstart"), json!({})).await;
    } else {
        es_object(client, ns, name, json!({})).await;
    }
}

/// Labels an ECK Elasticsearch (what a StackConfigPolicy's resourceSelector matches).
pub async fn label(client: &Client, ns: &str, name: &str, labels: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &es_resource());
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": labels}})),
    )
    .await
    .expect("label Elasticsearch");
}

/// An ECK StackConfigPolicy (stackconfigpolicy.k8s.elastic.co/v1alpha1) with `spec`.
pub async fn stack_config_policy(client: &Client, ns: &str, name: &str, spec: Value) {
    create(client, ns, &scp_resource(), name, spec).await;
}
