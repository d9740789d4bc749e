//! Elastic's current route for DGA (8.0 on): the Fleet integration package `dga`, installed
//! through Kibana's Fleet package API. The package brings the trained model and its
//! version-prefixed pipelines (real-stack.md "Fleet"); what the operator adds around it (the
//! `@custom` hook processor, Elastic's rules, the module's job) is planned by the other parts
//! of the engine, in the same plan.
//!
//! A Fleet package has no place for an ownership marker: the owner's record (a DgaModel's
//! `status.fleetPackage`) is the only proof that the operator installed it, so a package found
//! without that record is someone else's ([`diff`]).

use std::fmt;
use std::io::Read;

use super::diff::Reason;
use crate::error::{Error, Service};
use crate::kibana::KibanaClient;
use crate::kibana::fleet::PackageState;

/// The package's name in the registry.
pub const PACKAGE: &str = "dga";
/// The ML module the package installs (a Kibana `ml-module` saved object).
pub const MODULE: &str = "dga";
/// The model the 0.x–3.x packages ship (`elasticsearch/ml_model/dga_1611725_2.0.json`), used
/// until Kibana lists the installed package's own `ml_model` asset.
pub const MODEL_ID: &str = "dga_1611725_2.0";
/// Kibana's upload limit (`MAX_FILE_SIZE_BYTES`, Fleet `routes/epm/index.ts`): a larger archive
/// can never be installed, so it is refused before the download finishes.
pub const MAX_ARCHIVE_BYTES: u64 = 104_857_600;

/// The package's router, as Fleet installs it for `version`.
pub fn router(version: &str) -> String {
    format!("{version}-ml_dga_ingest_pipeline")
}

/// The package's inference pipeline, as Fleet installs it for `version`.
pub fn inference(version: &str) -> String {
    format!("{version}-ml_dga_inference_pipeline")
}

/// A package archive to install by upload (the air-gapped route).
#[derive(Clone, PartialEq)]
pub struct Archive {
    /// The archive as read once (cheap to clone, sent as the upload body without a copy).
    pub bytes: bytes::Bytes,
    pub sha256: String,
    /// Where it came from (credentials removed), for messages.
    pub url: String,
    /// Its manifest's `version`.
    pub version: String,
    /// Its manifest's `conditions.kibana.version`.
    pub kibana_constraint: Option<String>,
}

impl fmt::Debug for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Archive")
            .field("bytes", &self.bytes.len())
            .field("sha256", &self.sha256)
            .field("url", &self.url)
            .field("version", &self.version)
            .finish()
    }
}

impl Archive {
    /// Reads a package archive's manifest: one top-level `<name>-<version>/` folder holding
    /// `manifest.yml` (the package-spec layout Kibana's upload accepts). `want` is the version
    /// the spec asks for: an archive of another package or version is refused here, before
    /// Kibana installs something else than asked.
    pub fn open(bytes: Vec<u8>, sha256: String, url: &str, want: &str) -> Result<Archive, Error> {
        let bad =
            |why: String| Error::InvalidRelease(format!("the package archive at {url} {why}"));
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..]))
            .map_err(|e| bad(format!("is not a zip archive: {e}")))?;
        let manifest_name = (0..zip.len())
            .filter_map(|i| zip.name_for_index(i).map(str::to_string))
            .find(|n| {
                let mut parts = n.split('/');
                matches!(
                    (parts.next(), parts.next(), parts.next()),
                    (Some(_), Some("manifest.yml"), None)
                )
            })
            .ok_or_else(|| bad("has no <name>-<version>/manifest.yml".into()))?;
        let mut text = String::new();
        let entry = zip
            .by_name(&manifest_name)
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        // A manifest is a few KB; a bomb is cut short rather than inflated.
        entry
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("has a manifest that cannot be read: {e}")))?;
        let manifest: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| bad(format!("has a manifest that is not YAML: {e}")))?;
        let field = |path: &[&str]| -> Option<String> {
            let mut v = &manifest;
            for k in path {
                v = v.get(*k)?;
            }
            v.as_str().map(str::to_string)
        };
        let name = field(&["name"]).unwrap_or_default();
        let version = field(&["version"]).unwrap_or_default();
        if name != PACKAGE || version != want {
            return Err(bad(format!(
                "holds package `{name}` version `{version}`, not {PACKAGE} {want} as spec.fleetPackage.version asks"
            )));
        }
        // 1.0.0 manifests write the dotted key `kibana.version` under `conditions`.
        let kibana_constraint = field(&["conditions", "kibana", "version"])
            .or_else(|| field(&["conditions", "kibana.version"]));
        Ok(Archive {
            bytes: bytes.into(),
            sha256,
            url: url.to_string(),
            version,
            kibana_constraint,
        })
    }
}

/// Where the wanted version comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The registry Kibana is configured with.
    Registry,
    /// An archive the operator downloaded, installed by upload.
    Upload(Archive),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub version: String,
    pub source: Source,
}

/// What Kibana said of the package.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `GET .../packages/dga`: `None` when Kibana knows no such package (not installed, and
    /// no registry it can reach has it).
    pub package: Option<PackageState>,
    /// `GET .../packages/dga/{version}` for the wanted version, read only when it is to be
    /// installed from the registry (its Kibana constraint); `None`: not found.
    pub wanted: Option<PackageState>,
    /// Kibana's version.
    pub kibana: String,
    /// The stack's licence type (Elasticsearch's `_license`, which Kibana's is).
    pub license: String,
}

impl Observed {
    pub fn installed(&self) -> Option<&str> {
        self.package.as_ref().and_then(|p| p.installed.as_deref())
    }

    /// Kibana's answer for the package when `version` is the one installed (its asset lists
    /// name that version's model and rules).
    pub fn installed_at(&self, version: &str) -> Option<&PackageState> {
        self.package
            .as_ref()
            .filter(|p| p.installed.as_deref() == Some(version))
    }
}

/// What the owner knows of the package it manages.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// A DgaModel's record (`status.fleetPackage`): the version seen last and whether this
    /// owner installed it (`None`: nothing recorded, a package found is someone else's), and a
    /// version whose install it started and did not see finish.
    Status {
        last: Option<(String, bool)>,
        installing: Option<String>,
    },
    /// The one-shot CLI keeps no record: a package already at the wanted version is used as
    /// it is, another version is someone else's.
    Cli,
}

/// The one step on the package.
#[derive(Clone, Debug, PartialEq)]
pub struct Install {
    pub version: String,
    /// `None`: from Kibana's registry.
    pub upload: Option<Archive>,
    pub reason: Reason,
    /// The version installed before, if any.
    pub from: Option<String>,
}

impl fmt::Display for Install {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match &self.upload {
            None => "from Kibana's package registry".to_string(),
            Some(a) => format!(
                "by upload of {} (sha256 {})",
                a.url,
                &a.sha256[..12.min(a.sha256.len())]
            ),
        };
        match (&self.reason, &self.from) {
            (Reason::Upgrade | Reason::Adopt, Some(from)) => write!(
                f,
                "{} Fleet package {PACKAGE} {from} -> {} {how}",
                self.reason, self.version
            ),
            _ => write!(
                f,
                "{} Fleet package {PACKAGE} {} {how}",
                self.reason, self.version
            ),
        }
    }
}

/// The package's part of a plan.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Plan {
    pub install: Option<Install>,
    /// A version someone else installed, in the way (no `overwrite`).
    pub conflict: Option<String>,
    /// After the plan: the version installed, and whether this owner installed it.
    pub record: Option<(String, bool)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.install.is_none() && self.conflict.is_none()
    }
}

/// Pure: what to do so that the wanted version is installed. `Err` for what no retry fixes
/// soon: a version Kibana cannot find (no registry reachable, or no such version), or one whose
/// Kibana constraint this stack does not meet (Fleet does not check the requested version's
/// constraint itself: a newer, incompatible version installs).
pub fn diff(
    d: &Desired,
    o: &Observed,
    recorded: &Recorded,
    overwrite: bool,
) -> Result<Plan, Error> {
    let installed = o.installed().map(str::to_string);
    // Some(by_us): the installed version is the one the record names (installed by this owner,
    // or adopted).
    let ours = match recorded {
        Recorded::Status {
            last: Some((v, by_us)),
            ..
        } if installed.as_deref() == Some(v.as_str()) => Some(*by_us),
        Recorded::Status {
            installing: Some(v),
            ..
        } if installed.as_deref() == Some(v.as_str()) => Some(true),
        _ => None,
    };
    let mut plan = Plan::default();
    match installed.as_deref() {
        Some(v) if v == d.version => {
            plan.record = match (recorded, ours) {
                (_, Some(by_us)) => Some((v.to_string(), by_us)),
                (Recorded::Cli, None) => Some((v.to_string(), false)),
                (Recorded::Status { .. }, None) if overwrite => Some((v.to_string(), false)),
                (Recorded::Status { .. }, None) => {
                    plan.conflict = Some(format!(
                        "Fleet package {PACKAGE} {v} is installed and was not installed by this DgaModel (set overwrite: true to adopt it; it is then never uninstalled by the operator)"
                    ));
                    None
                }
            };
            return Ok(plan);
        }
        Some(v) => {
            let reason = match ours {
                Some(_) => Reason::Upgrade,
                None if overwrite => Reason::Adopt,
                None => {
                    plan.conflict = Some(format!(
                        "Fleet package {PACKAGE} {v} is installed and was not installed by this DgaModel (set overwrite: true to adopt it and move it to {})",
                        d.version
                    ));
                    return Ok(plan);
                }
            };
            plan.install = Some(Install {
                version: d.version.clone(),
                upload: None,
                reason,
                from: Some(v.to_string()),
            });
        }
        None => {
            let recorded_before = matches!(
                recorded,
                Recorded::Status {
                    last: Some((_, true)),
                    ..
                }
            );
            plan.install = Some(Install {
                version: d.version.clone(),
                upload: None,
                reason: if recorded_before {
                    Reason::Repair
                } else {
                    Reason::Create
                },
                from: None,
            });
        }
    }
    // An install: from where, and may this stack take it.
    let constraint = match &d.source {
        Source::Upload(_) if !takes_uploads(&o.kibana, &o.license) => {
            return Err(Error::UploadNotAllowed(format!(
                "Kibana {} installs an uploaded package only with an enterprise or trial licence (kibana PR #79653, lifted in 8.8.2 by PR #159280); this stack's licence is {}: give Kibana a package registry it can reach (drop spec.fleetPackage.url), or upgrade the stack",
                o.kibana, o.license
            )));
        }
        Source::Upload(a) => a.kibana_constraint.clone(),
        Source::Registry => match &o.wanted {
            Some(w) => w.kibana_constraint.clone(),
            None => {
                return Err(Error::PackageUnavailable(format!(
                    "Kibana {} cannot find Fleet package {PACKAGE} {}: its package registry is unreachable or has no such version (for an air-gapped Kibana set spec.fleetPackage.url to a mirror of the package archive)",
                    o.kibana, d.version
                )));
            }
        },
    };
    if let Some(c) = constraint {
        match crate::kibana::fleet::kibana_satisfies(&c, &o.kibana) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::PackageIncompatible(format!(
                    "Fleet package {PACKAGE} {} needs Kibana {c}; this Kibana is {} (pick a version whose constraint this stack meets)",
                    d.version, o.kibana
                )));
            }
            Err(e) => return Err(Error::PackageIncompatible(e)),
        }
    }
    if let (Some(i), Source::Upload(a)) = (plan.install.as_mut(), &d.source) {
        i.upload = Some(a.clone());
    }
    plan.record = Some((d.version.clone(), true));
    Ok(plan)
}

/// Whether Kibana `kibana` installs uploaded packages under licence `license`: from 7.10 to
/// 8.8.1 only with enterprise (or a trial, which has every feature).
pub fn takes_uploads(kibana: &str, license: &str) -> bool {
    let before = semver::Version::parse(kibana.split('-').next().unwrap_or(kibana))
        .is_ok_and(|v| v < semver::Version::new(8, 8, 2));
    !before || matches!(license, "enterprise" | "trial")
}

/// One read of the package (and, when it is to be installed from the registry, of the wanted
/// version's constraint).
pub async fn observe(
    client: &KibanaClient,
    d: &Desired,
    kibana: &str,
    license: &str,
) -> Result<Observed, Error> {
    let package = client.fleet_package(PACKAGE, None).await?;
    let needs_install =
        package.as_ref().and_then(|p| p.installed.as_deref()) != Some(d.version.as_str());
    let wanted = if needs_install && matches!(d.source, Source::Registry) {
        client.fleet_package(PACKAGE, Some(&d.version)).await?
    } else {
        None
    };
    Ok(Observed {
        package,
        wanted,
        kibana: kibana.to_string(),
        license: license.to_string(),
    })
}

/// Carries out the plan's install; the assets Kibana says it installed, `(type, id)`.
pub async fn apply(client: &KibanaClient, plan: &Plan) -> Result<Vec<(String, String)>, Error> {
    let Some(i) = &plan.install else {
        return Ok(Vec::new());
    };
    let items = match &i.upload {
        // `force`: the version is pinned, and Fleet refuses one older than the newest
        // compatible version without it (400 "... is out-of-date ...", real-stack.md).
        None => client
            .fleet_install(PACKAGE, &i.version, true)
            .await
            .map_err(|e| not_found_as_unavailable(e, &i.version))?,
        Some(a) => client
            .fleet_upload(a.bytes.clone())
            .await
            .map_err(|e| upload_refused(e, &i.version))?,
    };
    Ok(items
        .iter()
        .filter_map(|v| {
            Some((
                v.get("type")?.as_str()?.to_string(),
                v.get("id")?.as_str()?.to_string(),
            ))
        })
        .collect())
}

/// The package's own detection rules (0.x–1.x ship Elastic's DGA rules as `security-rule`
/// assets, `kibana/security_rule/<id>.json`; 2.0 moved them to Elastic's prebuilt rules), read
/// through Kibana's file route: the rule bodies, by id. Empty for a package without any.
pub async fn package_rules(
    client: &KibanaClient,
    version: &str,
    kibana_assets: &[(String, String)],
) -> Result<Vec<serde_json::Value>, Error> {
    let mut ids: Vec<&str> = kibana_assets
        .iter()
        .filter(|(t, _)| t == "security-rule")
        .map(|(_, id)| id.as_str())
        .collect();
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let path = format!("kibana/security_rule/{id}.json");
        let Some(bytes) = client.fleet_file(PACKAGE, version, &path).await? else {
            continue;
        };
        let so: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::Rejected {
                service: Service::Kibana,
                what: format!("GET Fleet package file {PACKAGE} {version} {path}"),
                status: 200,
                detail: format!("not JSON: {e}"),
            })?;
        // A saved-object file (`{id, type, attributes}`); the rule is its attributes.
        let rule = so.get("attributes").cloned().unwrap_or(so);
        if rule.get("rule_id").is_some() {
            out.push(rule);
        }
    }
    Ok(out)
}

/// Uninstalls the version the owner installed.
pub async fn remove(client: &KibanaClient, version: &str) -> Result<String, Error> {
    client.fleet_uninstall(PACKAGE, version).await?;
    Ok(format!("Fleet package {PACKAGE} {version}"))
}

/// The `ml_model` asset among a package's Elasticsearch assets.
pub fn model_in(assets: impl IntoIterator<Item = (String, String)>) -> Option<String> {
    assets
        .into_iter()
        .find(|(t, _)| t == "ml_model")
        .map(|(_, id)| id)
}

/// Kibana's 404 on an install ("[dga] package not found in registry") is what an unreachable
/// registry looks like too.
fn not_found_as_unavailable(e: Error, version: &str) -> Error {
    match e {
        Error::Rejected {
            service: Service::Kibana,
            status: 404,
            detail,
            ..
        } => Error::PackageUnavailable(format!(
            "Kibana cannot install Fleet package {PACKAGE} {version} from its registry ({detail}); for an air-gapped Kibana set spec.fleetPackage.url to a mirror of the package archive"
        )),
        e => e,
    }
}

/// Kibana 7.10 to 8.8.1 takes uploads only with an enterprise (or trial) licence: its 403
/// "Requires Enterprise license" (kibana PRs #79653, #159280) is not about the credentials.
fn upload_refused(e: Error, version: &str) -> Error {
    match e {
        Error::Unauthorized {
            service: Service::Kibana,
            status: 403,
            detail,
        } if detail.contains("Enterprise license") => Error::UploadNotAllowed(format!(
            "Kibana refused the upload of Fleet package {PACKAGE} {version} ({detail}): before 8.8.2 Kibana installs uploaded packages only with an enterprise or trial licence; give Kibana a package registry it can reach (drop spec.fleetPackage.url), or upgrade the stack"
        )),
        e => e,
    }
}

/// The wanted version's answer from Kibana for messages.
pub fn describe(o: &Observed) -> String {
    match o.package.as_ref().and_then(|p| p.installed.as_ref()) {
        Some(v) => format!("Fleet package {PACKAGE} {v} is installed"),
        None => format!("Fleet package {PACKAGE} is not installed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(installed: Option<&str>) -> PackageState {
        PackageState {
            installed: installed.map(str::to_string),
            install_source: installed.map(|_| "registry".to_string()),
            version: installed.unwrap_or("2.3.7").to_string(),
            kibana_constraint: Some("^8.9.0 || ^9.0.0".into()),
            latest: Some("2.3.7".into()),
            assets: vec![],
            kibana_assets: vec![],
        }
    }

    fn observed(installed: Option<&str>, wanted: Option<&str>, kibana: &str) -> Observed {
        Observed {
            package: Some(state(installed)),
            wanted: wanted.map(|c| PackageState {
                kibana_constraint: Some(c.to_string()),
                ..state(None)
            }),
            kibana: kibana.into(),
            license: "platinum".into(),
        }
    }

    fn none() -> Recorded {
        Recorded::Status {
            last: None,
            installing: None,
        }
    }

    fn last(v: &str, by_us: bool) -> Recorded {
        Recorded::Status {
            last: Some((v.into(), by_us)),
            installing: None,
        }
    }

    #[test]
    fn an_install_cut_short_is_still_ours() {
        // The record says an install of 2.3.7 started; Kibana has 2.3.7: ours, nothing to do.
        let o = observed(Some("2.3.7"), None, "9.2.0");
        let rec = Recorded::Status {
            last: Some(("2.2.0".into(), true)),
            installing: Some("2.3.7".into()),
        };
        let p = diff(&want("2.3.7"), &o, &rec, false).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.record, Some(("2.3.7".into(), true)));
        // Without that record, the same package reads as someone else's.
        assert!(
            diff(&want("2.3.7"), &o, &last("2.2.0", true), false)
                .unwrap()
                .conflict
                .is_some()
        );
    }

    fn want(v: &str) -> Desired {
        Desired {
            version: v.into(),
            source: Source::Registry,
        }
    }

    #[test]
    fn a_fresh_stack_gets_the_version_from_the_registry() {
        let o = observed(None, Some("^8.9.0 || ^9.0.0"), "8.17.0");
        let p = diff(&want("2.3.7"), &o, &none(), false).unwrap();
        let i = p.install.expect("an install");
        assert_eq!((i.reason, i.upload, i.from), (Reason::Create, None, None));
        assert_eq!(p.record, Some(("2.3.7".into(), true)));
    }

    #[test]
    fn the_recorded_version_in_place_is_no_step() {
        let o = observed(Some("2.3.7"), None, "9.2.0");
        let rec = last("2.3.7", true);
        let p = diff(&want("2.3.7"), &o, &rec, false).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.record, Some(("2.3.7".into(), true)));
    }

    #[test]
    fn a_bump_of_our_version_is_an_upgrade() {
        let o = observed(Some("2.2.0"), Some("^8.9.0 || ^9.0.0"), "9.2.0");
        let rec = last("2.2.0", true);
        let p = diff(&want("2.3.7"), &o, &rec, false).unwrap();
        let i = p.install.unwrap();
        assert_eq!(
            (i.reason, i.from.as_deref()),
            (Reason::Upgrade, Some("2.2.0"))
        );
    }

    #[test]
    fn a_package_someone_else_installed_is_a_conflict_unless_overwrite() {
        // Same version: adopted as it is with overwrite, and recorded as not ours.
        let o = observed(Some("2.3.7"), None, "8.17.0");
        let p = diff(&want("2.3.7"), &o, &none(), false).unwrap();
        assert!(
            p.conflict
                .unwrap()
                .contains("was not installed by this DgaModel")
        );
        let p = diff(&want("2.3.7"), &o, &none(), true).unwrap();
        assert_eq!((p.install, p.conflict), (None, None));
        assert_eq!(p.record, Some(("2.3.7".into(), false)));
        // Another version: moved with overwrite (then this owner installed that version).
        let o = observed(Some("2.2.0"), Some("^8.9.0 || ^9.0.0"), "8.17.0");
        let p = diff(&want("2.3.7"), &o, &none(), false).unwrap();
        assert!(p.conflict.unwrap().contains("2.2.0"));
        let p = diff(&want("2.3.7"), &o, &none(), true).unwrap();
        assert_eq!(p.install.unwrap().reason, Reason::Adopt);
        // A version recorded as adopted that someone moved since is not ours either.
        let rec = last("2.1.0", true);
        let p = diff(&want("2.3.7"), &o, &rec, false).unwrap();
        assert!(p.conflict.is_some());
    }

    #[test]
    fn the_cli_uses_the_wanted_version_in_place() {
        let o = observed(Some("2.3.7"), None, "8.17.0");
        let p = diff(&want("2.3.7"), &o, &Recorded::Cli, false).unwrap();
        assert!(p.is_empty());
        let o = observed(Some("2.2.0"), Some("^8.9.0"), "8.17.0");
        assert!(
            diff(&want("2.3.7"), &o, &Recorded::Cli, false)
                .unwrap()
                .conflict
                .is_some()
        );
    }

    #[test]
    fn an_unknown_version_or_an_unmet_constraint_is_told_not_installed() {
        let o = observed(None, None, "8.17.0");
        let e = diff(&want("2.3.7"), &o, &none(), false).unwrap_err();
        assert_eq!(e.reason(), "PackageUnavailable");
        assert!(e.to_string().contains("spec.fleetPackage.url"), "{e}");
        let o = observed(None, Some("^9.4.0"), "9.2.0");
        let e = diff(&want("3.0.0"), &o, &none(), false).unwrap_err();
        assert_eq!(e.reason(), "PackageIncompatible");
        assert!(
            e.to_string().contains("^9.4.0") && e.to_string().contains("9.2.0"),
            "{e}"
        );
    }

    #[test]
    fn uploads_before_8_8_2_need_an_enterprise_licence() {
        assert!(!takes_uploads("8.8.1", "platinum"));
        assert!(takes_uploads("8.8.1", "trial"));
        assert!(takes_uploads("8.8.1", "enterprise"));
        assert!(takes_uploads("8.8.2", "platinum"));
        assert!(takes_uploads("9.2.0", "basic"));
        let a = Archive {
            bytes: bytes::Bytes::new(),
            sha256: "ab".into(),
            url: "u".into(),
            version: "1.1.0".into(),
            kibana_constraint: Some("^8.0.0".into()),
        };
        let d = Desired {
            version: "1.1.0".into(),
            source: Source::Upload(a),
        };
        let o = observed(None, None, "8.8.1");
        let e = diff(&d, &o, &none(), false).unwrap_err();
        assert_eq!(e.reason(), "UploadNotAllowed");
        assert!(e.to_string().contains("enterprise or trial licence"), "{e}");
        let o = Observed {
            license: "trial".into(),
            ..o
        };
        assert!(
            diff(&d, &o, &none(), false)
                .unwrap()
                .install
                .unwrap()
                .upload
                .is_some()
        );
    }

    #[test]
    fn an_archive_names_its_package_and_constraint() {
        let zip = |manifest: &str| {
            let mut buf = std::io::Cursor::new(Vec::new());
            let mut w = zip::ZipWriter::new(&mut buf);
            w.start_file(
                "dga-2.3.7/manifest.yml",
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            std::io::Write::write_all(&mut w, manifest.as_bytes()).unwrap();
            w.finish().unwrap();
            buf.into_inner()
        };
        let ok = zip(
            "name: dga\nversion: 2.3.7\nconditions:\n  kibana:\n    version: ^8.9.0 || ^9.0.0\n",
        );
        let a = Archive::open(ok.clone(), "ab".into(), "http://m/dga.zip", "2.3.7").unwrap();
        assert_eq!(a.kibana_constraint.as_deref(), Some("^8.9.0 || ^9.0.0"));
        let e = Archive::open(ok, "ab".into(), "http://m/dga.zip", "2.3.6").unwrap_err();
        assert!(e.to_string().contains("not dga 2.3.6"), "{e}");
        let dotted = zip("name: dga\nversion: 2.3.7\nconditions:\n  kibana.version: ^8.0.0\n");
        let a = Archive::open(dotted, "ab".into(), "u", "2.3.7").unwrap();
        assert_eq!(a.kibana_constraint.as_deref(), Some("^8.0.0"));
        assert!(Archive::open(b"<html>".to_vec(), "ab".into(), "u", "2.3.7").is_err());
    }
}
