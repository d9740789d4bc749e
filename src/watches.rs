//! What a DgaModel depends on besides its own spec (its Secret, or an ECK `Elasticsearch`, its
//! Secrets and a `Kibana`), and the watches that re-run it as soon as one of them changes: a
//! person who fixes a Secret sees `Stalled` turn into `Ready` within seconds, not at the next
//! resync.
//!
//! Only metadata is watched (`PartialObjectMeta`: the apiserver sends no Secret data), and a
//! watch that fails (ECK not installed, RBAC without list/watch) only logs at debug level and
//! retries with its own backoff: it never delays the DgaModels' own triggers.

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::api::DgaModel;

/// A kind of object a DgaModel may depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Elasticsearch,
    Kibana,
}

/// One dependency: objects of `kind` in `namespace` named `name`, or (ECK's generated Secrets)
/// whose name starts with `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub prefix: bool,
}

impl Dependency {
    fn matches(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        self.kind == kind
            && self.namespace == namespace
            && if self.prefix {
                name.starts_with(&self.name)
            } else {
                name == self.name
            }
    }
}

/// What `target::resolve` reads for this DgaModel. ECK derives its Secrets' names from the
/// cluster's (`<name>-es-elastic-user`, `<name>-es-http-certs-public`, ..., `<name>-kb-...`;
/// see target.rs), so every Secret with that prefix counts.
pub fn dependencies(m: &DgaModel) -> Vec<Dependency> {
    let home = m.namespace().unwrap_or_default();
    let dep = |kind, namespace: &str, name: String, prefix| Dependency {
        kind,
        namespace: namespace.to_string(),
        name,
        prefix,
    };
    let mut out = Vec::new();
    let r = &m.spec.cluster_ref;
    if let Some(s) = &r.secret_name {
        out.push(dep(Kind::Secret, &home, s.clone(), false));
    }
    if let Some(n) = &r.name {
        let ns = r.namespace.as_deref().unwrap_or(&home);
        out.push(dep(Kind::Elasticsearch, ns, n.clone(), false));
        out.push(dep(Kind::Secret, ns, format!("{n}-es-"), true));
        if let Some(c) = &r.credentials_secret {
            out.push(dep(Kind::Secret, &home, c.clone(), false));
        }
        if m.spec.kibana_ref.is_none() {
            // The cluster's Kibana is found, not named (target.rs): any Kibana in the
            // cluster's or the DgaModel's namespace, and its Secrets, may be the one.
            for ns in [ns, home.as_str()] {
                out.push(dep(Kind::Kibana, ns, String::new(), true));
                out.push(dep(Kind::Secret, ns, String::new(), true));
            }
        }
    }
    if let Some(k) = &m.spec.kibana_ref {
        let ns = k.namespace.as_deref().unwrap_or(&home);
        out.push(dep(Kind::Kibana, ns, k.name.clone(), false));
        out.push(dep(Kind::Secret, ns, format!("{}-kb-", k.name), true));
    }
    out.dedup();
    out
}

/// The DgaModels in `store` that depend on the object `kind` `namespace`/`name`.
pub fn dependents(
    store: &Store<DgaModel>,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<DgaModel>> {
    store
        .state()
        .iter()
        .filter(|m| {
            dependencies(m)
                .iter()
                .any(|d| d.matches(kind, namespace, name))
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// The watched kinds: core Secrets and ECK's (elastic/cloud-on-k8s, `config/crds/v1`).
pub fn eck_resource(kind: Kind) -> ApiResource {
    let (group, k, plural) = match kind {
        Kind::Elasticsearch => (
            "elasticsearch.k8s.elastic.co",
            "Elasticsearch",
            "elasticsearches",
        ),
        Kind::Kibana => ("kibana.k8s.elastic.co", "Kibana", "kibanas"),
        Kind::Secret => ("", "Secret", "secrets"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", k), plural)
}

/// A metadata-only watch of `kind` in the operator's scope, with its own backoff; errors are
/// logged and dropped.
pub fn trigger(
    client: &Client,
    namespace: Option<&str>,
    kind: Kind,
) -> impl Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + 'static {
    let ar = eck_resource(kind);
    let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects()
        .filter_map(move |r| async move {
            match r {
                Ok(o) => Some(Ok(o)),
                Err(e) => {
                    tracing::debug!(?kind, error = %e, "watch of a dependency failed; retrying");
                    None
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(spec: serde_json::Value) -> DgaModel {
        serde_json::from_value(json!({
            "apiVersion": "dgaoperator.io/v1alpha1", "kind": "DgaModel",
            "metadata": {"name": "m", "namespace": "home"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn secret_and_eck_dependencies() {
        let m =
            model(json!({"releaseTag": "ML-DGA-20210126-1", "clusterRef": {"secretName": "es"}}));
        let d = dependencies(&m);
        assert!(d[0].matches(Kind::Secret, "home", "es"));
        assert!(!d[0].matches(Kind::Secret, "home", "es2"));
        assert!(!d[0].matches(Kind::Secret, "other", "es"));

        let m = model(json!({"releaseTag": "ML-DGA-20210126-1",
            "clusterRef": {"name": "quickstart", "namespace": "elastic"},
            "kibanaRef": {"name": "kb"}}));
        let d = dependencies(&m);
        let any = |k, ns, n| d.iter().any(|x| x.matches(k, ns, n));
        assert!(any(Kind::Elasticsearch, "elastic", "quickstart"));
        assert!(any(Kind::Secret, "elastic", "quickstart-es-elastic-user"));
        assert!(any(
            Kind::Secret,
            "elastic",
            "quickstart-es-http-certs-public"
        ));
        assert!(!any(Kind::Secret, "home", "quickstart-es-elastic-user"));
        assert!(any(Kind::Kibana, "home", "kb"));
        assert!(any(Kind::Secret, "home", "kb-kb-http-certs-public"));
        assert!(!any(Kind::Elasticsearch, "home", "quickstart"));
        assert!(!any(Kind::Kibana, "elastic", "other-kb"));

        // credentialsSecret lives in the DgaModel's namespace; without kibanaRef any Kibana of
        // the cluster's or the DgaModel's namespace may be the one found.
        let m = model(json!({"releaseTag": "ML-DGA-20210126-1",
            "clusterRef": {"name": "quickstart", "namespace": "elastic", "credentialsSecret": "dga-user"}}));
        let d = dependencies(&m);
        let any = |k, ns, n| d.iter().any(|x| x.matches(k, ns, n));
        assert!(any(Kind::Secret, "home", "dga-user"));
        assert!(any(Kind::Kibana, "elastic", "kb"));
        assert!(any(Kind::Kibana, "home", "kb"));
        assert!(any(Kind::Secret, "elastic", "kb-kb-http-certs-public"));
        assert!(!any(Kind::Kibana, "third", "kb"));
    }
}
