//! `clusterRef.name` / `spec.kibanaRef`: dereferencing ECK `Elasticsearch` and `Kibana` resources
//! on the real kube-apiserver, by ECK's naming conventions (`<name>-es-http`,
//! `<name>-es-elastic-user`/`elastic`, `<name>-es-http-certs-public`/`ca.crt`, `<name>-kb-http`,
//! `<name>-kb-http-certs-public`). Minimal ECK CRDs are installed when absent.
//!
//! Run: `tests/testbed/k8s.sh run -- cargo test --test eck`.

#[path = "support/eck.rs"]
mod eck;
mod support;

use std::time::Duration;

use dga_operator::api::{ClusterRef, ObjectRef};
use dga_operator::controller::Settings;
use dga_operator::target::{self, Auth, Target};
use dga_standin::StandinConfig;
use dga_standin::bundle::Layout;
use eck::{ES_GROUP, KB_GROUP};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::{Env, TestNs};

async fn ns(prefix: &str) -> TestNs {
    let ns = TestNs::new(prefix).await;
    eck::install_crds(&ns.client).await;
    ns
}

fn by_name(name: &str, namespace: Option<&str>) -> ClusterRef {
    ClusterRef {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        ..Default::default()
    }
}

fn kb(name: &str, namespace: Option<&str>) -> ObjectRef {
    ObjectRef {
        name: name.into(),
        namespace: namespace.map(Into::into),
    }
}

fn password(auth: &Auth) -> (&str, &str) {
    match auth {
        Auth::Basic { username, password } => (username.as_str(), password.expose()),
        other => panic!("expected basic auth, got {other:?}"),
    }
}

async fn resolve(
    client: &Client,
    ns: &str,
    r: &ClusterRef,
    k: Option<&ObjectRef>,
) -> Result<Target, String> {
    // The error's stable reason first, so tests can assert it along with the message.
    target::resolve(client, ns, r, k)
        .await
        .map_err(|e| format!("{}: {e}", e.reason()))
}

#[tokio::test]
async fn elasticsearch_and_kibana_resolve_by_eck_conventions() {
    let ns = ns("eck-resolve").await;
    let n = ns.name.clone();
    let (pw, es_ca) = eck::quickstart(&ns.client, &n, "quickstart").await;
    let kb_ca = eck::kibana(&ns.client, &n, "kb", (&n, "quickstart")).await;

    let t = resolve(
        &ns.client,
        &n,
        &by_name("quickstart", None),
        Some(&kb("kb", None)),
    )
    .await
    .unwrap();
    assert_eq!(
        t.elasticsearch.url,
        format!("https://quickstart-es-http.{n}.svc:9200")
    );
    assert_eq!(password(&t.elasticsearch.auth), ("elastic", pw.as_str()));
    assert_eq!(t.elasticsearch.ca_pem.as_deref(), Some(es_ca.as_slice()));
    // The CA is a usable PEM: an HTTP client builds with it.
    t.elasticsearch.http_client(Duration::from_secs(5)).unwrap();
    let k = t.kibana.as_ref().expect("kibana resolved");
    assert_eq!(k.url, format!("https://kb-kb-http.{n}.svc:5601"));
    assert_eq!(password(&k.auth), ("elastic", pw.as_str()));
    assert_eq!(k.ca_pem.as_deref(), Some(kb_ca.as_slice()));
    k.http_client(Duration::from_secs(5)).unwrap();
    // The key the controller serialises on, and no password in any printed form.
    assert_eq!(t.key(), t.elasticsearch.url);
    assert!(!format!("{t:?}").contains(&pw), "{t:?}");

    // Without kibanaRef: the ECK Kibana whose elasticsearchRef names the cluster.
    let t = resolve(&ns.client, &n, &by_name("quickstart", None), None)
        .await
        .unwrap();
    assert_eq!(
        t.kibana.map(|k| k.url),
        Some(format!("https://kb-kb-http.{n}.svc:5601"))
    );
    ns.cleanup().await;
}

/// TLS off as ECK lays it out (`spec.http.tls.selfSignedCertificate.disabled: true`): the Service
/// port is named `http`, and the public certs Secret ECK wrote earlier still holds `ca.crt` (ECK
/// does not delete it). The scheme comes from the spec (ECK's `Protocol()`), not from the Secret.
#[tokio::test]
async fn tls_disabled_in_the_spec_is_plain_http_even_with_a_ca_published() {
    let ns = ns("eck-plain").await;
    let n = ns.name.clone();
    let off = json!({"http": {"tls": {"selfSignedCertificate": {"disabled": true}}}});
    eck::es_object(&ns.client, &n, "plain", off.clone()).await;
    eck::secret(&ns.client, &n, "plain-es-elastic-user", "elastic", b"pw").await;
    eck::secret(
        &ns.client,
        &n,
        "plain-es-http-certs-public",
        "ca.crt",
        &eck::ca_pem("leftover-es"),
    )
    .await;
    eck::service(&ns.client, &n, "plain-es-http", json!({}), "http", 9200).await;
    eck::kb_object(&ns.client, &n, "plainkb", (&n, "plain"), off).await;
    eck::secret(
        &ns.client,
        &n,
        "plainkb-kb-http-certs-public",
        "ca.crt",
        &eck::ca_pem("leftover-kb"),
    )
    .await;
    eck::service(&ns.client, &n, "plainkb-kb-http", json!({}), "http", 5601).await;
    let t = resolve(
        &ns.client,
        &n,
        &by_name("plain", None),
        Some(&kb("plainkb", None)),
    )
    .await
    .unwrap();
    assert_eq!(
        t.elasticsearch.url,
        format!("http://plain-es-http.{n}.svc:9200")
    );
    assert!(t.elasticsearch.ca_pem.is_none());
    let k = t.kibana.unwrap();
    assert_eq!(k.url, format!("http://plainkb-kb-http.{n}.svc:5601"));
    assert!(k.ca_pem.is_none());
    ns.cleanup().await;
}

/// TLS on (ECK's default) but no CA published yet: resolving waits (`WaitingForECK`) and never
/// falls back to an http URL, for Elasticsearch and for Kibana.
#[tokio::test]
async fn https_without_a_published_ca_waits_and_never_downgrades() {
    let ns = ns("eck-noca").await;
    let n = ns.name.clone();
    eck::es_object(&ns.client, &n, "young", json!({})).await;
    eck::secret(&ns.client, &n, "young-es-elastic-user", "elastic", b"pw").await;
    eck::service(&ns.client, &n, "young-es-http", json!({}), "https", 9200).await;
    let e = resolve(&ns.client, &n, &by_name("young", None), None)
        .await
        .unwrap_err();
    assert!(e.starts_with("WaitingForECK: "), "{e}");
    assert!(
        e.contains(&format!("{n}/young-es-http-certs-public")),
        "{e}"
    );
    assert!(!e.contains("http://"), "{e}");

    // A certs Secret with neither `ca.crt` nor `tls.crt` is still nothing to trust.
    eck::secret(&ns.client, &n, "young-es-http-certs-public", "other", b"x").await;
    let e = resolve(&ns.client, &n, &by_name("young", None), None)
        .await
        .unwrap_err();
    assert!(e.starts_with("WaitingForECK: "), "{e}");

    // Elasticsearch complete, its Kibana (TLS by default) without a published CA.
    eck::quickstart(&ns.client, &n, "quickstart").await;
    eck::kb_object(&ns.client, &n, "kb", (&n, "quickstart"), json!({})).await;
    eck::service(&ns.client, &n, "kb-kb-http", json!({}), "https", 5601).await;
    for k in [Some(kb("kb", None)), None] {
        let e = resolve(&ns.client, &n, &by_name("quickstart", None), k.as_ref())
            .await
            .unwrap_err();
        assert!(e.starts_with("WaitingForECK: "), "{e}");
        assert!(e.contains(&format!("{n}/kb-kb-http-certs-public")), "{e}");
    }
    ns.cleanup().await;
}

/// A Role in `namespace` allowing `get` on `resource.group`, bound to the ServiceAccount
/// `default` of `home`'s namespace: what a user grants for a cross-namespace reference.
async fn grant_get(home: &TestNs, namespace: &str, group: &str, resource: &str) {
    grant_get_to(home, "default", namespace, group, resource).await
}

/// `grant_get` for the ServiceAccount `sa` of `home`'s namespace.
async fn grant_get_to(home: &TestNs, sa: &str, namespace: &str, group: &str, resource: &str) {
    let name = format!("dga-{}-{sa}-{resource}", home.name);
    let roles: Api<Role> = Api::namespaced(home.client.clone(), namespace);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [group], "resources": [resource], "verbs": ["get"]}],
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(home.client.clone(), namespace);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": home.name}],
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// The apiserver's RBAC authorizer sees a new binding through its informer: poll until the
/// refusal is about `resource` (no longer about what was just granted).
async fn wait_refusal(
    home: &TestNs,
    r: &ClusterRef,
    k: Option<&ObjectRef>,
    resource: &str,
) -> String {
    support::wait_for(Duration::from_secs(60), || async {
        match resolve(&home.client, &home.name, r, k).await {
            Err(e) if e.starts_with("ReferenceNotAllowed: ") && e.contains(resource) => Some(e),
            _ => None,
        }
    })
    .await
    .unwrap_or_else(|| panic!("no ReferenceNotAllowed about {resource}"))
}

#[tokio::test]
async fn cross_namespace_references() {
    let home = ns("eck-home").await;
    let elastic = ns("eck-elastic").await;
    let kibana = ns("eck-kibana").await;
    let (pw, es_ca) = eck::quickstart(&elastic.client, &elastic.name, "quickstart").await;
    let kb_ca = eck::kibana(
        &kibana.client,
        &kibana.name,
        "kb",
        (&elastic.name, "quickstart"),
    )
    .await;
    let es_ref = by_name("quickstart", Some(&elastic.name));
    let kb_ref = kb("kb", Some(&kibana.name));
    let sa = format!("system:serviceaccount:{}:default", home.name);

    // Without a grant the reference is refused (Stalled), naming who lacks which permission.
    let e = resolve(&home.client, &home.name, &es_ref, Some(&kb_ref))
        .await
        .unwrap_err();
    assert!(e.starts_with("ReferenceNotAllowed: "), "{e}");
    assert!(
        e.contains(&sa)
            && e.contains(&format!(
                "may not `get` elasticsearches.elasticsearch.k8s.elastic.co {}/quickstart",
                elastic.name
            )),
        "{e}"
    );
    assert!(!e.contains(&pw), "{e}");

    // Elasticsearch granted, Kibana not yet: now the Kibana reference is the one refused.
    grant_get(&home, &elastic.name, ES_GROUP, "elasticsearches").await;
    let e = wait_refusal(&home, &es_ref, Some(&kb_ref), "kibanas").await;
    assert!(
        e.contains(&sa)
            && e.contains(&format!(
                "may not `get` kibanas.kibana.k8s.elastic.co {}/kb",
                kibana.name
            )),
        "{e}"
    );
    grant_get(&home, &kibana.name, KB_GROUP, "kibanas").await;
    let t = support::wait_for(Duration::from_secs(60), || async {
        resolve(&home.client, &home.name, &es_ref, Some(&kb_ref))
            .await
            .ok()
    })
    .await
    .expect("resolves once both Roles are bound");
    assert_eq!(
        t.elasticsearch.url,
        format!("https://quickstart-es-http.{}.svc:9200", elastic.name)
    );
    assert_eq!(password(&t.elasticsearch.auth).1, pw);
    assert_eq!(t.elasticsearch.ca_pem.as_deref(), Some(es_ca.as_slice()));
    let k = t.kibana.unwrap();
    assert_eq!(
        k.url,
        format!("https://kb-kb-http.{}.svc:5601", kibana.name)
    );
    assert_eq!(k.ca_pem.as_deref(), Some(kb_ca.as_slice()));

    // kibanaRef without a namespace is looked up in the DgaModel's namespace, not the
    // Elasticsearch's.
    let e = resolve(
        &home.client,
        &home.name,
        &by_name("quickstart", Some(&elastic.name)),
        Some(&kb("kb", None)),
    )
    .await
    .unwrap_err();
    assert!(e.contains(&format!("{}/kb", home.name)), "{e}");

    // The referenced namespace is where the objects are looked up: not in the home namespace.
    let e = resolve(&home.client, &home.name, &by_name("quickstart", None), None)
        .await
        .unwrap_err();
    assert!(e.contains(&format!("{}/quickstart", home.name)), "{e}");
    for ns in [home, elastic, kibana] {
        ns.cleanup().await;
    }
}

#[tokio::test]
async fn errors_name_what_is_missing() {
    let ns = ns("eck-errors").await;
    let n = ns.name.clone();

    // No Elasticsearch resource: the message names spec.clusterRef and the object.
    let e = resolve(&ns.client, &n, &by_name("nosuch", None), None)
        .await
        .unwrap_err();
    assert!(
        e.contains("spec.clusterRef") && e.contains(&format!("Elasticsearch {n}/nosuch")),
        "{e}"
    );

    // The resource exists but ECK has not (yet) created the elastic-user Secret.
    eck::create_object(&ns.client, &n, &eck::es_resource(), "young").await;
    let e = resolve(&ns.client, &n, &by_name("young", None), None)
        .await
        .unwrap_err();
    assert!(e.contains(&format!("{n}/young-es-elastic-user")), "{e}");

    // The Secret lacks the `elastic` key.
    eck::create_object(&ns.client, &n, &eck::es_resource(), "odd").await;
    eck::secret(&ns.client, &n, "odd-es-elastic-user", "someone", b"pw").await;
    let e = resolve(&ns.client, &n, &by_name("odd", None), None)
        .await
        .unwrap_err();
    assert!(
        e.contains("odd-es-elastic-user") && e.contains("`elastic`"),
        "{e}"
    );

    // Elasticsearch fine, Kibana missing: the message names spec.kibanaRef.
    let (pw, _) = eck::quickstart(&ns.client, &n, "quickstart").await;
    let e = resolve(
        &ns.client,
        &n,
        &by_name("quickstart", None),
        Some(&kb("nokb", None)),
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("spec.kibanaRef") && e.contains(&format!("Kibana {n}/nokb")),
        "{e}"
    );
    // No error message carries the password.
    assert!(!e.contains(&pw));

    // Neither or both of secretName and name.
    let e = resolve(&ns.client, &n, &ClusterRef::default(), None)
        .await
        .unwrap_err();
    assert!(e.contains("exactly one"), "{e}");
    let both = ClusterRef {
        secret_name: Some("es".into()),
        name: Some("quickstart".into()),
        ..ClusterRef::default()
    };
    let e = resolve(&ns.client, &n, &both, None).await.unwrap_err();
    assert!(e.contains("exactly one"), "{e}");
    ns.cleanup().await;
}

/// ECK not installed. CRDs are cluster-wide and the other tests install ECK's, so this points the
/// existence check at an API group that has no CRD (the same request shape and the same 404 a
/// cluster without ECK answers) rather than uninstalling anything.
#[tokio::test]
async fn eck_not_installed_is_reported_as_such() {
    let ns = TestNs::new("eck-nocrd").await;
    let e = target::eck_resource_exists(
        &ns.client,
        &target::EckRef {
            kind: target::EckKind {
                group: "not-installed.dga-tests.example.com",
                version: "v1",
                kind: "Elasticsearch",
                plural: "elasticsearches",
            },
            namespace: &ns.name,
            name: "quickstart",
            field: "spec.clusterRef",
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spec.clusterRef") && e.contains("not installed"),
        "{e}"
    );
    ns.cleanup().await;
}

/// Through the controller: a DgaModel naming an ECK cluster gets as far as connecting to the
/// service ECK would have created (there is no cluster DNS here), and says so with that URL.
#[tokio::test]
async fn controller_connects_to_the_eck_service() {
    let settings = Settings {
        delete_timeout: Duration::from_secs(3),
        ..Settings::default()
    };
    let env = Env::start_with("eck-e2e", StandinConfig::default(), settings).await;
    eck::install_crds(&env.ns.client).await;
    let n = env.ns.name.clone();
    eck::quickstart(&env.ns.client, &n, "quickstart").await;
    eck::kibana(&env.ns.client, &n, "kb", (&n, "quickstart")).await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.apply(
        "dga",
        json!({"releaseTag": rel.tag, "clusterRef": {"name": "quickstart"}, "kibanaRef": {"name": "kb"}}),
    )
    .await;
    let m = env
        .wait_condition(
            "dga",
            "ElasticsearchReachable",
            "False",
            Some("Unreachable"),
        )
        .await;
    let c = m
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ElasticsearchReachable")
        .unwrap();
    let url = format!("https://quickstart-es-http.{n}.svc:9200");
    assert!(
        c.message.contains(&url),
        "message lacks {url}: {}",
        c.message
    );

    // A typo in clusterRef.name is a clear, non-transient error naming the field.
    env.apply(
        "typo",
        json!({"releaseTag": rel.tag, "clusterRef": {"name": "quickstrat"}}),
    )
    .await;
    // Stalled, not the Ready=False a pass writes when it starts.
    let m = env.wait_condition("typo", "Stalled", "True", None).await;
    let text = serde_json::to_string(&m.status).unwrap();
    assert!(
        text.contains("spec.clusterRef") && text.contains(&format!("{n}/quickstrat")),
        "{text}"
    );
    env.finish().await;
}

/// A controller environment with ECK's CRDs and an ECK `quickstart` cluster (TLS) routed to the
/// stand-in, its `elastic` password the stand-in's own; with `kibana` (the Kibana spec's extra
/// fields), also an ECK Kibana `kb` of it routed to the stand-in's Kibana.
async fn routed_env(prefix: &str, kibana: Option<serde_json::Value>) -> Env {
    let env = Env::start_with(prefix, StandinConfig::default(), Settings::default()).await;
    eck::install_crds(&env.ns.client).await;
    let n = env.ns.name.clone();
    let es = eck::addr(&env.standin.es_url());
    eck::quickstart_routed(&env.ns.client, &n, "quickstart", Some(es), "changeme").await;
    if let Some(extra) = kibana {
        let kb_addr = eck::addr(&env.standin.kibana_url());
        eck::kibana_routed(
            &env.ns.client,
            &n,
            "kb",
            (&n, "quickstart"),
            extra,
            Some(kb_addr),
        )
        .await;
    }
    env
}

/// Through the controller, ECK's default (TLS) layout routed to the stand-in by the sniffing
/// listeners of tests/support/eck.rs: the DgaModel installs, and no request carrying
/// `Authorization` reached the cluster's or Kibana's listener in plaintext. A control request
/// shows the listener does record a plaintext `Authorization`, so the empty list means something.
#[tokio::test]
async fn credentials_never_travel_in_plaintext_to_a_tls_cluster() {
    let env = routed_env("eck-tls", Some(json!({}))).await;
    let n = env.ns.name.clone();
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.apply(
        "dga",
        json!({"releaseTag": rel.tag, "clusterRef": {"name": "quickstart"}, "kibanaRef": {"name": "kb"}}),
    )
    .await;
    env.wait_ready("dga").await;
    assert!(
        !env.stack().models().await.is_empty(),
        "nothing installed through the TLS routes"
    );

    let es_host = format!("quickstart-es-http.{n}.svc");
    let kb_host = format!("kb-kb-http.{n}.svc");
    let seen = |host: &str| {
        eck::plaintext_authorizations()
            .iter()
            .filter(|h| *h == host)
            .count()
    };
    assert_eq!(
        seen(&es_host),
        0,
        "credentials sent in plaintext to {es_host}"
    );
    assert_eq!(
        seen(&kb_host),
        0,
        "credentials sent in plaintext to {kb_host}"
    );

    // Control: the same listener, spoken to in plaintext with credentials, records it.
    let plain = target::Endpoint::parse(
        &format!("http://{es_host}:9200"),
        Auth::Basic {
            username: "elastic".into(),
            password: "changeme".into(),
        },
        None,
        "url",
    )
    .unwrap();
    let http = plain.http_client(Duration::from_secs(10)).unwrap();
    let _ = plain.auth.apply(http.get(&plain.url)).send().await;
    assert_eq!(seen(&es_host), 1, "the plaintext control went unrecorded");
    env.finish().await;
}

/// The message of condition `type_` once it contains `needle` (the reason alone cannot tell two
/// Conflicts apart).
async fn wait_message(env: &Env, name: &str, type_: &str, needle: &str) -> String {
    let last = std::sync::Mutex::new(String::new());
    support::wait_for(Duration::from_secs(90), || async {
        let st = env.status(name).await?;
        let c = st.conditions.into_iter().find(|c| c.type_ == type_)?;
        *last.lock().unwrap() = format!("{}: {}", c.reason, c.message);
        c.message
            .contains(needle)
            .then(|| format!("{}: {}", c.reason, c.message))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{name}: {type_} never mentioned {needle:?}; last: {}",
            last.lock().unwrap()
        )
    })
}

/// The DNS hook owned by an ECK StackConfigPolicy, through the controller: the stand-in holds
/// the pipeline as file-based settings leave it (the REST API refuses to change it with
/// Elasticsearch's "set as read-only by [file_settings]"). Without overwrite the Conflict names
/// the policy; with overwrite Elasticsearch's refusal is reported with the policy too. Before
/// that, a basic licence on an ECK cluster gets ECK's licence advice (ECK reverts licences
/// uploaded by hand).
#[tokio::test]
async fn stack_config_policy_owned_hook_and_eck_licence_advice() {
    let env = routed_env("eck-scp", None).await;
    let n = env.ns.name.clone();
    eck::label(&env.ns.client, &n, "quickstart", json!({"env": "prod"})).await;
    env.standin.set_license("basic");
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    let spec = json!({"releaseTag": rel.tag, "clusterRef": {"name": "quickstart"}});
    env.apply("dga", spec.clone()).await;
    let m = env
        .wait_condition("dga", "Stalled", "True", Some("LicenseInsufficient"))
        .await;
    let text = serde_json::to_string(&m.status).unwrap();
    assert!(
        text.contains(&format!(
            "ECK manages the licence of Elasticsearch {n}/quickstart"
        )) && text.contains("license.k8s.elastic.co/scope=operator")
            && text.contains("license.k8s.elastic.co/type=enterprise_trial"),
        "{text}"
    );

    // A policy for this cluster's labels owns the hook; another policy selects other clusters.
    let hook = "logs-network_traffic.dns@custom";
    let body = json!({"processors": [{"set": {"field": "event.module", "value": "dns"}}]});
    eck::stack_config_policy(
        &env.ns.client,
        &n,
        "other-clusters",
        json!({"resourceSelector": {"matchLabels": {"env": "test"}},
               "elasticsearch": {"ingestPipelines": {hook: body}}}),
    )
    .await;
    eck::stack_config_policy(
        &env.ns.client,
        &n,
        "dns-hooks",
        json!({"resourceSelector": {"matchLabels": {"env": "prod"}},
               "elasticsearch": {"ingestPipelines": {hook: body}}}),
    )
    .await;
    env.standin.reserve_pipeline(hook, body.clone());
    env.standin.set_license("platinum");
    // A spec change (the default indices, spelled out) re-runs the Stalled DgaModel at once.
    let mut spec = spec;
    spec["enrichment"] = json!({"indices": ["packetbeat-*"]});
    let m = env.apply("dga", spec.clone()).await;
    assert_eq!(
        m.metadata.generation,
        Some(2),
        "the spec change is a new generation"
    );
    let policy = format!("StackConfigPolicy {n}/dns-hooks manages `{hook}`");
    let msg = wait_message(&env, "dga", "Stalled", &policy).await;
    assert!(msg.starts_with("Conflict: "), "{msg}");
    assert!(!msg.contains("other-clusters"), "{msg}");
    assert!(msg.contains("spec.overwrite cannot take over"), "{msg}");

    // overwrite: Elasticsearch refuses the write; the status says why and whose.
    spec["overwrite"] = json!(true);
    let m = env.apply("dga", spec).await;
    assert_eq!(m.metadata.generation, Some(3));
    let msg = wait_message(
        &env,
        "dga",
        "Stalled",
        "set as read-only by [file_settings]",
    )
    .await;
    assert!(
        msg.starts_with("Conflict: ") && msg.contains(&policy),
        "{msg}"
    );
    assert_eq!(
        env.standin.pipelines()[hook],
        body,
        "the reserved hook changed"
    );
    env.finish().await;
}

/// Without a StackConfigPolicy that names it, a read-only refusal still says who owns it.
#[tokio::test]
async fn read_only_without_a_policy_names_file_based_settings() {
    let ns = ns("eck-scp-none").await;
    let n = ns.name.clone();
    eck::quickstart(&ns.client, &n, "quickstart").await;
    let t = resolve(&ns.client, &n, &by_name("quickstart", None), None)
        .await
        .unwrap();
    let refused = dga_operator::error::Error::Rejected {
        service: dga_operator::error::Service::Elasticsearch,
        what: "writing ingest pipeline logs-network_traffic.dns@custom".into(),
        status: 400,
        detail: "illegal_argument_exception: Failed to process request \
                 [org.elasticsearch.action.ingest.PutPipelineRequest/unset] with errors: \
                 [[logs-network_traffic.dns@custom] set as read-only by [file_settings]]"
            .into(),
    };
    let e = t.explain_reserved(&ns.client, refused).await;
    assert_eq!(e.reason(), "Conflict");
    let e = e.to_string();
    assert!(
        e.contains("a StackConfigPolicy or other file-based settings own it")
            && e.contains("no StackConfigPolicy the operator can see manages it"),
        "{e}"
    );
    ns.cleanup().await;
}

/// Kibana with `server.basePath` and `server.rewriteBasePath` as ECK lays it out (in
/// spec.config), the stand-in's Kibana serving only under that path: the DgaModel goes Ready
/// with its rules installed.
#[tokio::test]
async fn kibana_base_path_through_the_controller() {
    let env = routed_env(
        "eck-kbpath",
        Some(json!({"config": {"server.basePath": "/kibana", "server.rewriteBasePath": true}})),
    )
    .await;
    env.standin.set_kibana_base_path("/kibana");
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.apply(
        "dga",
        json!({"releaseTag": rel.tag, "clusterRef": {"name": "quickstart"}}),
    )
    .await;
    env.wait_ready("dga").await;
    assert!(
        !env.standin.rules("default").is_empty(),
        "no rules installed under the base path"
    );
    let kb_requests: Vec<_> = env
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.service == dga_standin::Service::Kibana)
        .collect();
    assert!(!kb_requests.is_empty());
    assert!(
        kb_requests
            .iter()
            .all(|r| r.path.starts_with("/kibana/") && r.status != 404),
        "a Kibana request outside the base path: {:?}",
        kb_requests.iter().find(|r| !r.path.starts_with("/kibana/"))
    );
    env.finish().await;
}

/// `clusterRef.serviceAccountName`: the SubjectAccessReview asks about that ServiceAccount of the
/// DgaModel's namespace, not `default`; a name that is no ServiceAccount name is InvalidSpec.
#[tokio::test]
async fn service_account_name_is_the_identity_checked() {
    let home = ns("eck-sa-home").await;
    let elastic = ns("eck-sa-elastic").await;
    let (pw, _) = eck::quickstart(&elastic.client, &elastic.name, "quickstart").await;
    let with_sa = |sa: &str| ClusterRef {
        service_account_name: Some(sa.into()),
        ..by_name("quickstart", Some(&elastic.name))
    };
    let reader = with_sa("dga-reader");
    let e = resolve(&home.client, &home.name, &reader, None)
        .await
        .unwrap_err();
    assert!(
        e.starts_with("ReferenceNotAllowed: ")
            && e.contains(&format!("system:serviceaccount:{}:dga-reader", home.name)),
        "{e}"
    );
    grant_get_to(
        &home,
        "dga-reader",
        &elastic.name,
        ES_GROUP,
        "elasticsearches",
    )
    .await;
    let t = support::wait_for(Duration::from_secs(60), || async {
        resolve(&home.client, &home.name, &reader, None).await.ok()
    })
    .await
    .expect("dga-reader's grant lets the reference through");
    assert_eq!(password(&t.elasticsearch.auth).1, pw);
    // The grant is dga-reader's: `default` (no serviceAccountName) is still refused.
    let e = resolve(
        &home.client,
        &home.name,
        &by_name("quickstart", Some(&elastic.name)),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        e.starts_with("ReferenceNotAllowed: ")
            && e.contains(&format!("system:serviceaccount:{}:default", home.name)),
        "{e}"
    );
    let e = resolve(&home.client, &home.name, &with_sa("Not_A_Name"), None)
        .await
        .unwrap_err();
    assert!(
        e.starts_with("InvalidSpec: ") && e.contains("spec.clusterRef.serviceAccountName"),
        "{e}"
    );
    for ns in [home, elastic] {
        ns.cleanup().await;
    }
}

/// A namespaced operator (the chart's watchNamespace: `--namespace`, as the test controller
/// runs) refuses a reference into another namespace with a clear Stalled, even where a
/// SubjectAccessReview would allow it.
#[tokio::test]
async fn namespaced_operator_refuses_cross_namespace_references() {
    let env = Env::start_with("eck-nsd", StandinConfig::default(), Settings::default()).await;
    eck::install_crds(&env.ns.client).await;
    let elastic = ns("eck-nsd-elastic").await;
    eck::quickstart(&elastic.client, &elastic.name, "quickstart").await;
    grant_get(&env.ns, &elastic.name, ES_GROUP, "elasticsearches").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.apply(
        "dga",
        json!({"releaseTag": rel.tag,
               "clusterRef": {"name": "quickstart", "namespace": elastic.name}}),
    )
    .await;
    let m = env
        .wait_condition("dga", "Stalled", "True", Some("ReferenceNotAllowed"))
        .await;
    let text = serde_json::to_string(&m.status).unwrap();
    assert!(
        text.contains("spec.clusterRef.namespace")
            && text.contains(&elastic.name)
            && text.contains("installed namespaced"),
        "{text}"
    );
    env.finish().await;
    elastic.cleanup().await;
}
