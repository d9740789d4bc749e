//! The `DgaModel` custom resource: what users write (spec) and what the operator reports (status).
//!
//! Doc comments on the spec fields become `kubectl explain` text, so they are written for users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "dgaoperator.io";
pub const FINALIZER: &str = "dgaoperator.io/cleanup";
pub const DEFAULT_REPOSITORY: &str = "elastic/detection-rules";

/// Release tags are `ML-DGA-YYYYMMDD-N`, e.g. `ML-DGA-20201129-25`.
pub const RELEASE_TAG_PATTERN: &str = r"^ML-DGA-[0-9]{8}-[0-9]+$";

/// Whether `tag` has the form of a release tag (`RELEASE_TAG_PATTERN`); compiled once, as every
/// reconcile pass asks.
pub fn is_release_tag(tag: &str) -> bool {
    static RE: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(RELEASE_TAG_PATTERN).expect("pattern"));
    RE.is_match(tag)
}

/// Installs Elastic's DGA detection (a supervised model that scores DNS questions for
/// algorithmically generated domains, and the ingest pipelines that enrich DNS events with it)
/// into an Elasticsearch cluster, from an ML-DGA release (`releaseTag`) or Elastic's Fleet
/// package `dga` (`fleetPackage`), with its detection rules in Kibana; keeps it installed, and
/// removes what it installed when this object is deleted.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    doc = "A DgaModel installs Elastic's DGA detection (an ML-DGA release or the Fleet package dga) into an Elasticsearch cluster, and its rules into Kibana, and keeps it there.",
    group = "dgaoperator.io",
    version = "v1alpha1",
    kind = "DgaModel",
    plural = "dgamodels",
    shortname = "dga",
    namespaced,
    status = "DgaModelStatus",
    printcolumn = r#"{"name":"Release","type":"string","description":"The release installed and serving","jsonPath":".status.installedTag"}"#,
    printcolumn = r#"{"name":"Package","type":"string","description":"The Fleet package dga version installed","jsonPath":".status.fleetPackage.version"}"#,
    printcolumn = r#"{"name":"State","type":"string","description":"Pending, Installing, Installed, Retrying, NeedsAttention, Planned, Suspended or Deleting","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Rules","type":"string","jsonPath":".status.rules"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Wanted","type":"string","priority":1,"description":"spec.releaseTag","jsonPath":".spec.releaseTag"}"#,
    printcolumn = r#"{"name":"Wanted-Package","type":"string","priority":1,"description":"spec.fleetPackage.version","jsonPath":".spec.fleetPackage.version"}"#,
    printcolumn = r#"{"name":"Model","type":"string","priority":1,"jsonPath":".status.modelId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = exactly_one_source)]
pub struct DgaModelSpec {
    /// The ML-DGA release to install, `ML-DGA-YYYYMMDD-N` (for example `ML-DGA-20201129-25`).
    /// Changing it upgrades the installed package without a gap in enrichment. Set exactly one
    /// of `releaseTag` (the ML-DGA zips, last published 2021, for stacks up to 7.x and 8.x
    /// without Fleet) or `fleetPackage` (Elastic's route from 8.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ML-DGA-[0-9]{8}-[0-9]+$"))]
    pub release_tag: Option<String>,

    /// Elastic's Fleet integration package `dga` to install through Kibana (8.0 and later):
    /// the model and its version-prefixed pipelines come from the package, the operator wires
    /// the `@custom` hooks to them, installs Elastic's rules and sets up the package's anomaly
    /// job through Kibana's ML module. Set exactly one of `releaseTag` or `fleetPackage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_package: Option<FleetPackage>,

    /// Where the release comes from. When omitted, the tag is looked up in the GitHub releases of
    /// `elastic/detection-rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ReleaseSource>,

    /// The Elasticsearch cluster to install into: either `secretName` of a Secret in this
    /// namespace holding the connection, or `name` (and optionally `namespace`) of an ECK
    /// `Elasticsearch` resource.
    pub cluster_ref: ClusterRef,

    /// Replace objects with the package's ids that this DgaModel does not own (for example
    /// left over from the old `setup-dga-model` tool). Without it such objects are reported as a
    /// Conflict and left untouched.
    #[serde(default)]
    pub overwrite: bool,

    /// Stop making changes to the cluster. The status still reports what the operator sees.
    #[serde(default)]
    pub suspend: bool,

    /// `Apply` (default) makes the cluster match the spec. `Plan` changes nothing: the operator
    /// computes what it would create, update or delete (for example for a tag bump) and writes
    /// the summary to `status.plan` and an event, so a reviewer sees the effect first.
    #[serde(default)]
    pub mode: Mode,

    /// What happens to the installed objects when this DgaModel is deleted: `Delete` (default)
    /// removes the objects this DgaModel owns; `Retain` leaves them in the cluster.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Where the enrichment is wired in, so DNS events are scored as they are indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<EnrichmentSpec>,

    /// An ECK `Kibana` resource to install the rules into (its `<name>-kb-http` service and base
    /// path, with the credentials of the cluster); with `clusterRef.name` it must reference that
    /// Elasticsearch. Without it: the ECK Kibana that references the cluster (in the cluster's or
    /// the DgaModel's namespace), or the Secret's `kibana-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kibana_ref: Option<ObjectRef>,

    /// The detection rules that alert on the enrichment, installed into Kibana.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesSpec>,
}

/// Wiring the enrichment pipeline into the indices that receive DNS events. Each target is wired
/// one way only (never twice): Fleet data streams through their `@custom` pipeline hook (one
/// `pipeline` processor added to what the hook holds), Beats indices through
/// `index.final_pipeline` (and, for data streams, in their index template, so rollovers stay
/// wired). Where Fleet's own DGA pipeline already runs nothing is added (condition
/// `EnrichmentWired`, reason `FleetEnrichmentPresent`). A `final_pipeline` someone else set is a
/// Conflict unless `overwrite: true`. Deleting the DgaModel unwires first.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichmentSpec {
    /// Wire the enrichment in (default `true`). `false` unwires what this DgaModel wired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// `@custom` pipelines of Fleet integrations to hook. Default
    /// `logs-network_traffic.dns@custom` (the Network Packet Capture integration's DNS data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_pipelines: Option<Vec<String>>,

    /// Index patterns whose existing indices get `index.final_pipeline` (Packetbeat without
    /// Fleet), and the index templates of the data streams they match. Default `packetbeat-*`.
    /// Plain indices created later are wired at the next resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<String>>,
}

/// Which detection rules to install into Kibana, and how.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RulesSpec {
    /// Install the rules. Default: yes when a Kibana URL is known (the Secret's `kibana-url`).
    /// `false` removes rules this DgaModel installed earlier; `true` makes a missing Kibana an
    /// error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// `rule_id`s to install (default: all of the package's rules). The package's
    /// machine-learning rule also gets its anomaly detection job and datafeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_ids: Option<Vec<String>>,

    /// Index patterns the rules search. Default `packetbeat-*`,
    /// `logs-network_traffic.dns-*` and `logs-endpoint.events.network-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Vec<String>>,

    /// Kibana space to install into. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9_-]+$"))]
    pub space: Option<String>,

    /// Whether rules start enabled when first created (default `true`). A rule someone enabled
    /// or disabled by hand in Kibana keeps that choice: the operator never flips it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_new_rules: Option<bool>,
}

/// Where to download the release zip from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSource {
    /// GitHub repository (`owner/name`) whose releases hold the tag. Default
    /// `elastic/detection-rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))]
    pub repository: Option<String>,

    /// Download the release zip from this URL (a mirror) instead of looking the tag up on GitHub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: Option<String>,

    /// Expected sha256 of the release zip (64 hex digits). A download that does not match is
    /// refused before anything is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
}

/// A version of Elastic's Fleet integration package `dga`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetPackage {
    /// The package version, e.g. `2.3.7`. Changing it upgrades the package, then moves the
    /// hooks to the new version's pipelines (the old version's stay until then: no gap). The
    /// version's Kibana constraint must match the stack (2.x: 8.9 and later; 3.x: 9.4 and
    /// later; 1.x: 8.0 to 8.x).
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,

    /// Download the package archive (zip) from this URL and install it by upload, for a Kibana
    /// without access to a package registry (air-gapped). Without it, Kibana installs the
    /// version from the registry it is configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: Option<String>,

    /// Expected sha256 of the archive at `url` (64 hex digits): a download that does not match
    /// is refused before anything is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
}

/// Where a DgaModel's enrichment comes from: exactly one of the spec's two sources.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Route<'a> {
    /// An ML-DGA release zip (`spec.releaseTag`, `spec.source`).
    Release {
        tag: &'a str,
        source: Option<&'a ReleaseSource>,
    },
    /// Elastic's Fleet package `dga` (`spec.fleetPackage`).
    Fleet(&'a FleetPackage),
}

impl DgaModelSpec {
    /// The spec's source, or why it has none (the CRD's `oneOf` refuses both and neither, but
    /// an object stored before that schema, or the CLI, may still carry them).
    pub fn route(&self) -> Result<Route<'_>, String> {
        match (&self.release_tag, &self.fleet_package) {
            (Some(tag), None) => {
                if is_release_tag(tag) {
                    Ok(Route::Release {
                        tag,
                        source: self.source.as_ref(),
                    })
                } else {
                    Err(format!(
                        "spec.releaseTag `{tag}` is not of the form ML-DGA-YYYYMMDD-N"
                    ))
                }
            }
            (None, Some(p)) => {
                if !is_package_version(&p.version) {
                    return Err(format!(
                        "spec.fleetPackage.version `{}` is not a package version (semver, e.g. 2.3.7)",
                        p.version
                    ));
                }
                if p.sha256.is_some() && p.url.is_none() {
                    return Err(
                        "spec.fleetPackage.sha256 checks the archive at spec.fleetPackage.url: set url too (a registry install has no archive to check)".into(),
                    );
                }
                if self.source.is_some() {
                    return Err(
                        "spec.source belongs to spec.releaseTag; with spec.fleetPackage use spec.fleetPackage.url".into(),
                    );
                }
                if self
                    .enrichment
                    .as_ref()
                    .is_some_and(|e| e.indices.as_ref().is_some_and(|i| !i.is_empty()))
                {
                    return Err(
                        "spec.enrichment.indices wires Beats indices to a release's pipelines; with spec.fleetPackage the enrichment is wired through the @custom hooks of spec.enrichment.customPipelines, as Elastic documents for the package".into(),
                    );
                }
                Ok(Route::Fleet(p))
            }
            (Some(_), Some(_)) => {
                Err("set one of spec.releaseTag or spec.fleetPackage, not both".into())
            }
            (None, None) => Err("set spec.releaseTag or spec.fleetPackage".into()),
        }
    }

    /// What the spec asks to install, for messages: `release ML-DGA-…` or `Fleet package dga
    /// 2.3.7`.
    pub fn wanted_label(&self) -> String {
        match (&self.release_tag, &self.fleet_package) {
            (Some(t), _) => format!("release {t}"),
            (None, Some(p)) => format!("Fleet package dga {}", p.version),
            (None, None) => "nothing".into(),
        }
    }
}

/// Whether `v` reads as a package version (semver).
pub fn is_package_version(v: &str) -> bool {
    semver::Version::parse(v).is_ok()
}

/// Kubernetes 1.20 has no CEL, but it does enforce `oneOf` with `required` lists.
fn exactly_one_source(schema: &mut schemars::Schema) {
    schema.insert(
        "oneOf".into(),
        serde_json::json!([{"required": ["releaseTag"]}, {"required": ["fleetPackage"]}]),
    );
}

/// The cluster to install into. Set exactly one of `secretName` or `name`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = exactly_one_cluster_ref)]
pub struct ClusterRef {
    /// Name of a Secret in the DgaModel's namespace with the keys `url` (Elasticsearch URL),
    /// `username` and `password`, or `api-key` (base64 `id:key` as Elasticsearch issues it), or
    /// `token` (a bearer token, e.g. of an Elasticsearch service account);
    /// optionally `ca.crt` (PEM CA for TLS) and `kibana-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// Name of an ECK `Elasticsearch` resource. The operator uses its `<name>-es-http` service
    /// (scheme from its `spec.http`, port by name from the Service), the
    /// `<name>-es-elastic-user` Secret (or `credentialsSecret`) and the
    /// `<name>-es-http-certs-public` CA; it never falls back to plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Namespace of the ECK `Elasticsearch` resource. Default: the DgaModel's namespace.
    /// Another namespace (here or in `kibanaRef`) is used only when the ServiceAccount
    /// `serviceAccountName` of the DgaModel's namespace may `get` the referenced resource (a
    /// SubjectAccessReview, as ECK checks its own cross-namespace references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// With `name`: the ServiceAccount, in the DgaModel's namespace, whose RBAC decides whether
    /// a reference into another namespace is allowed. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// With `name`: a Secret in the DgaModel's namespace holding the credentials to use instead
    /// of ECK's `elastic` superuser: `username` and `password` (a `kubernetes.io/basic-auth`
    /// Secret, e.g. an ECK file-realm user) or `api-key`. ECK's URL and CA are still used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,

    /// Do not verify the TLS certificates of Elasticsearch and Kibana. Only for test clusters:
    /// anyone on the path can then read the credentials. Every change made while this is set
    /// comes with a Warning event. Prefer `ca.crt` in the Secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
}

/// A reference to an object by name, in the DgaModel's namespace unless `namespace` is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Name of the object.
    pub name: String,
    /// Namespace of the object. Default: the DgaModel's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kubernetes 1.20 has no CEL, but it does enforce `oneOf` with `required` lists.
fn exactly_one_cluster_ref(schema: &mut schemars::Schema) {
    schema.insert(
        "oneOf".into(),
        serde_json::json!([{"required": ["secretName"]}, {"required": ["name"]}]),
    );
}

/// Whether the operator applies changes or only plans them.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Mode {
    /// Make the cluster match the spec.
    #[default]
    Apply,
    /// Compute and report the changes, make none.
    Plan,
}

/// What to do with installed objects when the DgaModel is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the objects this DgaModel owns.
    #[default]
    Delete,
    /// Leave them installed.
    Retain,
}

/// What the operator observed and did.
///
/// The schema defaults a missing status to `{observedGeneration: -1, state: Pending}` (the
/// apiserver applies it on every read), so a DgaModel the operator has not yet spoken about reads
/// as in progress to kstatus (Flux), Argo CD and `kubectl wait` from its first second, not as
/// healthy: the fix Flux made for its own kinds (fluxcd/kustomize-controller#387,
/// fluxcd/helm-controller#294).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {"observedGeneration": -1, "state": "Pending"}))]
pub struct DgaModelStatus {
    /// The generation of the spec that this status describes (-1: not yet seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One word for `kubectl get`: what the operator is doing or waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,

    /// kstatus conditions (`Ready`, `Reconciling`, `Stalled`) and one per part of the install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The release tag currently installed and serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_tag: Option<String>,

    /// The Fleet package `dga` in Kibana, when `spec.fleetPackage` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_package: Option<FleetPackageStatus>,

    /// Id of the trained model currently installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,

    /// `cluster_uuid` of the Elasticsearch cluster the package is installed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uuid: Option<String>,

    /// sha256 of the installed release zip (on the Fleet route: of the uploaded package
    /// archive, or `registry` for a version installed from Kibana's registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sha256: Option<String>,

    /// When the operator last brought the cluster in line with the release (its last write,
    /// or the pass that first found everything in place). Quiet resyncs do not change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// In `mode: Plan` (or while suspended): the changes the operator would make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,

    /// Detection rules installed / wanted, e.g. `4/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,

    /// The objects this DgaModel installed and owns; removed on delete.
    #[serde(default, skip_serializing_if = "InstalledObjects::is_empty")]
    pub objects: InstalledObjects,
}

/// The Fleet package as the operator last saw it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetPackageStatus {
    /// The version installed in Kibana (absent until the first install finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether this DgaModel installed that version (then deleting it uninstalls the package,
    /// under `deletionPolicy: Delete`); `false` for a package someone else installed and this
    /// DgaModel adopted with `overwrite: true`, which is never uninstalled.
    pub installed_by_operator: bool,
    /// How the version came: `registry` or `upload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A version whose install this DgaModel has asked Kibana for and not yet seen finish:
    /// recorded before the request, so that an install cut short (a crash, a lost status
    /// write) is still known as the operator's and is finished, not refused as someone else's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installing: Option<String>,
}

/// The state column: derived from the conditions (see `status::state`), so it never disagrees
/// with them.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum State {
    /// The operator has not yet reported on this object (the schema default).
    Pending,
    /// A pass is changing the cluster: first install, upgrade or repair (`Reconciling=True`).
    Installing,
    /// Installed and current (`Ready=True`).
    Installed,
    /// A transient error (unreachable, 429, 5xx); retried with backoff (`Reconciling=True`).
    Retrying,
    /// A person must fix something, named in `Stalled` (`Stalled=True`).
    NeedsAttention,
    /// `mode: Plan`: the plan is computed (`Ready=True`, `ChangesPending` says what).
    Planned,
    /// `suspend: true`: hands off (`Ready=True` when current, `Stalled=True` with changes held).
    Suspended,
    /// Deleted; the operator is removing what it installed.
    Deleting,
}

/// Ids of the objects a DgaModel owns in Elasticsearch.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstalledObjects {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<String>,
    /// Indices whose `index.final_pipeline` this DgaModel set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wired_indices: Vec<String>,
    /// `@custom` pipeline hooks holding this DgaModel's `pipeline` processor (the rest of each
    /// hook is not ours).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    /// Composable index templates (of wired data streams) whose `index.final_pipeline` this
    /// DgaModel set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wired_templates: Vec<String>,
    /// Anomaly detection jobs (with their datafeeds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Kibana space of the installed rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_space: Option<String>,
    /// Elastic's prebuilt rules (their rule_ids) this DgaModel installed in `rulesSpace`
    /// through Kibana's prebuilt-rules API; a prebuilt rule a person installed is never listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prebuilt_rules: Vec<String>,
}

impl InstalledObjects {
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
            && self.scripts.is_empty()
            && self.pipelines.is_empty()
            && self.jobs.is_empty()
            && self.wired_indices.is_empty()
            && self.hooks.is_empty()
            && self.wired_templates.is_empty()
            && self.rules_space.is_none()
            && self.prebuilt_rules.is_empty()
    }
}

/// A condition in the standard `metav1.Condition` shape.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// One CamelCase word saying why.
    pub reason: String,
    /// What happened, for a person.
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// The generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = DgaModel::crd();
    format!(
        "# Generated by `dga-operator crd`; do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("CRD serializes")
    )
}
