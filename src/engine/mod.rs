//! The one engine every front door runs: build (pure) -> observe -> diff -> apply.
//!
//! `build` turns a release and an owner into the desired objects; `observe` reads what the
//! cluster holds (once per pass); `diff` yields an ordered plan; `apply` executes it. A plan with
//! no actions means no writes.

pub mod apply;
pub mod build;
pub mod detection;
pub mod diff;
pub mod hooks;
pub mod mljob;
pub mod observe;
pub mod package;
pub mod plan;
pub mod templates;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use apply::{apply, cleanup};
pub use build::{Desired, Wiring, build, build_with};
pub use diff::{Action, Plan, Reason, diff};
pub use observe::{Observed, observe};

/// Who owns what the engine installs: a DgaModel (or a CLI user, as a pseudo-owner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Owners (`namespace/name`) whose leftovers count as this owner's: DgaModels that no
    /// longer exist (deletionPolicy Retain, an abandoned cleanup), taken over with `overwrite`
    /// or removed by `dga-operator remove --leftovers-of`.
    pub adopted: Vec<String>,
}

impl Owner {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Tag on every trained model the operator installs (lets a pass find stale ones).
pub const MODEL_TAG: &str = "dga-operator";
/// Key under a pipeline's `_meta` and a model's `metadata` holding the ownership marker.
pub const MARKER_KEY: &str = "dga_operator";
/// First line of every stored script the operator writes: scripts have no metadata field.
pub const SCRIPT_MARKER_PREFIX: &str = "// dga-operator ";

/// The ownership marker written on every object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub owner: String,
    pub owner_uid: String,
    pub release: String,
    pub bundle_sha256: String,
}

impl Marker {
    pub fn for_owner(owner: &Owner, release: &str, bundle_sha256: &str) -> Self {
        Marker {
            owner: owner.key(),
            owner_uid: owner.uid.clone(),
            release: release.into(),
            bundle_sha256: bundle_sha256.into(),
        }
    }

    pub fn from_meta(meta: Option<&serde_json::Value>) -> Option<Marker> {
        serde_json::from_value(meta?.get(MARKER_KEY)?.clone()).ok()
    }

    /// The script marker line, e.g. `// dga-operator {"owner":...}`.
    pub fn script_line(&self) -> String {
        format!(
            "{SCRIPT_MARKER_PREFIX}{}",
            serde_json::to_string(self).expect("marker serializes")
        )
    }

    pub fn from_script_source(source: &str) -> Option<Marker> {
        let first = source.lines().next()?;
        serde_json::from_str(first.strip_prefix(SCRIPT_MARKER_PREFIX)?).ok()
    }
}

/// Who holds an object with one of our ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Us,
    /// Another DgaModel (`namespace/name`).
    OtherOwner(String),
    /// Something the operator did not install (the old CLI, a person).
    Foreign,
}

pub fn holder(marker: Option<&Marker>, owner: &Owner) -> Holder {
    match marker {
        Some(m) if m.owner == owner.key() || owner.adopted.contains(&m.owner) => Holder::Us,
        // Installed by the one-shot CLI: a DgaModel may take it over with `overwrite`.
        Some(m) if m.owner.starts_with('/') && !owner.namespace.is_empty() => Holder::Foreign,
        Some(m) => Holder::OtherOwner(m.owner.clone()),
        None => Holder::Foreign,
    }
}

impl Owner {
    /// The pseudo-owner of objects installed by `dga-operator setup` (no namespace, so no
    /// DgaModel can collide with it).
    pub fn cli() -> Owner {
        Owner {
            namespace: String::new(),
            name: "dga-operator-cli".into(),
            uid: String::new(),
            adopted: Vec::new(),
        }
    }
}
