//! Desired vs observed: an ordered plan. Order is what keeps the enrichment chain whole: the
//! model first, then scripts, then the inference pipeline, then the router; deletions last, so
//! no pipeline ever points at a missing model.

use std::fmt;

use serde_json::Value;

use super::build::referenced_models;
use super::observe::{Ids, Observed};
use super::{Desired, Holder, Marker, holder};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not there yet.
    Create,
    /// A different release is installed.
    Upgrade,
    /// Ours, same release, but changed or deleted by hand.
    Repair,
    /// Not ours; taken over because `overwrite` is set.
    Adopt,
    /// Ours, but no longer part of the release.
    Stale,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Create => "create",
            Reason::Upgrade => "upgrade",
            Reason::Repair => "repair",
            Reason::Adopt => "adopt",
            Reason::Stale => "remove stale",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    PutModel {
        id: String,
        reason: Reason,
    },
    PutScript {
        id: String,
        reason: Reason,
    },
    PutPipeline {
        id: String,
        reason: Reason,
    },
    DeletePipeline {
        id: String,
        reason: Reason,
    },
    DeleteScript {
        id: String,
        reason: Reason,
    },
    DeleteModel {
        id: String,
        reason: Reason,
    },
    /// Point an index's `index.final_pipeline` at the router.
    WireIndex {
        index: String,
        reason: Reason,
    },
    /// Remove an `index.final_pipeline` that points at one of ours.
    UnwireIndex {
        index: String,
        reason: Reason,
    },
}

impl Action {
    pub fn reason(&self) -> Reason {
        match self {
            Action::PutModel { reason, .. }
            | Action::PutScript { reason, .. }
            | Action::PutPipeline { reason, .. }
            | Action::DeletePipeline { reason, .. }
            | Action::DeleteScript { reason, .. }
            | Action::DeleteModel { reason, .. }
            | Action::WireIndex { reason, .. }
            | Action::UnwireIndex { reason, .. } => *reason,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::PutModel { id, reason } => write!(f, "{reason} trained model {id}"),
            Action::PutScript { id, reason } => write!(f, "{reason} stored script {id}"),
            Action::PutPipeline { id, reason } => write!(f, "{reason} ingest pipeline {id}"),
            Action::DeletePipeline { id, reason } => {
                write!(f, "{reason}: delete ingest pipeline {id}")
            }
            Action::DeleteScript { id, reason } => write!(f, "{reason}: delete stored script {id}"),
            Action::DeleteModel { id, reason } => write!(f, "{reason}: delete trained model {id}"),
            Action::WireIndex { index, reason } => {
                write!(f, "{reason} index.final_pipeline of {index}")
            }
            Action::UnwireIndex { index, reason } => {
                write!(f, "{reason}: unset index.final_pipeline of {index}")
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Objects in the way that the owner may not take: nothing is applied while any remain.
    pub conflicts: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.conflicts.is_empty()
    }

    /// A one-line summary, e.g. "create trained model x; update ingest pipeline y".
    pub fn summary(&self) -> String {
        if self.actions.is_empty() {
            return "no changes".into();
        }
        self.actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn has(&self, reason: Reason) -> bool {
        self.actions.iter().any(|a| a.reason() == reason)
    }
}

fn describe(kind: &str, id: &str, h: &Holder) -> String {
    match h {
        Holder::OtherOwner(o) => format!("{kind} {id} is managed by DgaModel {o}"),
        _ => format!(
            "{kind} {id} exists and was not installed by this DgaModel (set overwrite: true to replace it)"
        ),
    }
}

/// `owned` lists what the status says this owner installed: an object there whose marker was
/// removed by hand is still ours.
pub fn diff(d: &Desired, o: &Observed, owned: &Ids, overwrite: bool) -> Plan {
    let mut plan = Plan::default();
    // An upgrade is an object marked with another release; an object whose marker a person
    // removed (edited by hand) is a repair, as is re-creating what the status records.
    let put_reason = |marker: Option<&Marker>| match marker {
        Some(m) if m.owner != d.owner.key() => Reason::Adopt,
        Some(m) if m.bundle_sha256 != d.bundle_sha256 => Reason::Upgrade,
        _ => Reason::Repair,
    };
    let create_reason = |recorded: bool| {
        if recorded {
            Reason::Repair
        } else {
            Reason::Create
        }
    };

    // Model.
    match o.models.get(&d.model_id) {
        None => plan.actions.push(Action::PutModel {
            id: d.model_id.clone(),
            reason: create_reason(owned.models.contains(&d.model_id)),
        }),
        Some(m) => {
            let marker = Marker::from_meta(m.get("metadata"));
            let h = holder(marker.as_ref(), &d.owner);
            if h != Holder::Us {
                // A model cannot be replaced in place; a foreign one with our exact id is not
                // ours to delete even with overwrite.
                plan.conflicts
                    .push(describe("trained model", &d.model_id, &h));
            }
        }
    }

    // Scripts.
    for (id, body) in &d.scripts {
        match o.scripts.get(id) {
            None => plan.actions.push(Action::PutScript {
                id: id.clone(),
                reason: create_reason(owned.scripts.contains(id)),
            }),
            Some(seen) => {
                let src = seen
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let marker = Marker::from_script_source(src);
                let mut h = holder(marker.as_ref(), &d.owner);
                if h == Holder::Foreign && owned.scripts.contains(id) {
                    h = Holder::Us;
                }
                let same = seen.get("source") == body.pointer("/script/source")
                    && seen.get("lang") == body.pointer("/script/lang");
                match h {
                    Holder::Us if same => {}
                    Holder::Us => plan.actions.push(Action::PutScript {
                        id: id.clone(),
                        reason: put_reason(marker.as_ref()),
                    }),
                    Holder::Foreign if overwrite => plan.actions.push(Action::PutScript {
                        id: id.clone(),
                        reason: Reason::Adopt,
                    }),
                    _ => plan.conflicts.push(describe("stored script", id, &h)),
                }
            }
        }
    }

    // Pipelines, inference before router.
    let mut adopted_models = Vec::new();
    for (id, body) in &d.pipelines {
        match o.pipelines.get(id) {
            None => plan.actions.push(Action::PutPipeline {
                id: id.clone(),
                reason: create_reason(owned.pipelines.contains(id)),
            }),
            Some(seen) => {
                let marker = Marker::from_meta(seen.get("_meta"));
                let mut h = holder(marker.as_ref(), &d.owner);
                if h == Holder::Foreign && owned.pipelines.contains(id) {
                    h = Holder::Us;
                }
                match h {
                    Holder::Us if holds(seen, body) => {}
                    Holder::Us => plan.actions.push(Action::PutPipeline {
                        id: id.clone(),
                        reason: put_reason(marker.as_ref()),
                    }),
                    Holder::Foreign if overwrite => {
                        adopted_models.extend(referenced_models(seen));
                        plan.actions.push(Action::PutPipeline {
                            id: id.clone(),
                            reason: Reason::Adopt,
                        });
                    }
                    _ => plan.conflicts.push(describe("ingest pipeline", id, &h)),
                }
            }
        }
    }

    // Wiring, once the router exists and before anything old is deleted. Pipelines we own (or
    // owned) may be replaced in `final_pipeline`; anything else is the user's.
    let ours_pipeline = |name: &str| {
        name == d.router
            || owned.pipelines.contains(name)
            || o.pipelines.get(name).is_some_and(|p| {
                holder(Marker::from_meta(p.get("_meta")).as_ref(), &d.owner) == Holder::Us
            })
    };
    let hooked: Vec<&String> = d
        .pipelines
        .iter()
        .map(|(id, _)| id)
        .filter(|id| id.ends_with("@custom"))
        .collect();
    for (index, settings) in &o.indices {
        let wanted = d.wire_indices.iter().any(|p| wildcard(p, index));
        let fin = settings.final_pipeline.as_deref();
        if !wanted {
            if fin.is_some_and(ours_pipeline) {
                plan.actions.push(Action::UnwireIndex {
                    index: index.clone(),
                    reason: Reason::Stale,
                });
            }
            continue;
        }
        if settings.default_pipeline.as_deref() == Some(d.router.as_str())
            || hooked
                .iter()
                .any(|h| settings.default_pipeline.as_deref() == Some(h.as_str()))
        {
            // Already enriched through its default pipeline: a final pipeline would score twice.
            continue;
        }
        match fin {
            Some(f) if f == d.router => {}
            None => plan.actions.push(Action::WireIndex { index: index.clone(), reason: create_reason(owned.indices.contains(index)) }),
            Some(f) if ours_pipeline(f) => plan.actions.push(Action::WireIndex { index: index.clone(), reason: Reason::Upgrade }),
            Some(_) if overwrite => plan.actions.push(Action::WireIndex { index: index.clone(), reason: Reason::Adopt }),
            Some(f) => plan.conflicts.push(format!(
                "index {index} already has index.final_pipeline {f} (set overwrite: true to replace it, or spec.enrichment.indices to skip it)"
            )),
        }
    }

    // Deletions, after the switch: pipelines, scripts, then models.
    let desired_pipelines: Vec<&String> = d.pipelines.iter().map(|(id, _)| id).collect();
    for (id, body) in o.pipelines.iter().rev() {
        if desired_pipelines.contains(&id) {
            continue;
        }
        let marker = Marker::from_meta(body.get("_meta"));
        if holder(marker.as_ref(), &d.owner) == Holder::Us
            || (marker.is_none() && owned.pipelines.contains(id))
        {
            plan.actions.push(Action::DeletePipeline {
                id: id.clone(),
                reason: Reason::Stale,
            });
        }
    }
    for (id, seen) in &o.scripts {
        if d.scripts.iter().any(|(s, _)| s == id) {
            continue;
        }
        let marker = seen
            .get("source")
            .and_then(Value::as_str)
            .and_then(Marker::from_script_source);
        if holder(marker.as_ref(), &d.owner) == Holder::Us
            || (marker.is_none() && owned.scripts.contains(id))
        {
            plan.actions.push(Action::DeleteScript {
                id: id.clone(),
                reason: Reason::Stale,
            });
        }
    }
    for (id, m) in &o.models {
        if *id == d.model_id {
            continue;
        }
        let marker = Marker::from_meta(m.get("metadata"));
        if holder(marker.as_ref(), &d.owner) == Holder::Us {
            plan.actions.push(Action::DeleteModel {
                id: id.clone(),
                reason: Reason::Stale,
            });
        } else if marker.is_none() && adopted_models.contains(id) && *id == d.release_model_id {
            // The old CLI's copy of this release's model, freed by adopting its pipelines.
            plan.actions.push(Action::DeleteModel {
                id: id.clone(),
                reason: Reason::Adopt,
            });
        }
    }
    plan
}

/// What the owner holds, from the observed markers: used for status and for cleanup.
pub fn owned_ids(o: &Observed, owner: &super::Owner, known: &Ids) -> Ids {
    let mut ids = Ids::default();
    for (id, m) in &o.models {
        if holder(Marker::from_meta(m.get("metadata")).as_ref(), owner) == Holder::Us {
            ids.models.insert(id.clone());
        }
    }
    for (id, s) in &o.scripts {
        let marker = s
            .get("source")
            .and_then(Value::as_str)
            .and_then(Marker::from_script_source);
        if holder(marker.as_ref(), owner) == Holder::Us
            || (marker.is_none() && known.scripts.contains(id))
        {
            ids.scripts.insert(id.clone());
        }
    }
    for (id, p) in &o.pipelines {
        let marker = Marker::from_meta(p.get("_meta"));
        if holder(marker.as_ref(), owner) == Holder::Us
            || (marker.is_none() && known.pipelines.contains(id))
        {
            ids.pipelines.insert(id.clone());
        }
    }
    for (index, settings) in &o.indices {
        if settings
            .final_pipeline
            .as_ref()
            .is_some_and(|f| ids.pipelines.contains(f))
        {
            ids.indices.insert(index.clone());
        }
    }
    ids
}

/// `*` wildcards, as in index patterns.
/// Whether `seen` holds everything the operator writes (`want`): every key of an object we
/// write, with the same value, array by array element. Keys only the server adds are no drift:
/// from 9.2 a GET of a pipeline carries read-only `created_date_millis`/`modified_date_millis`
/// (ES PR #130847; Kibana strips them too, kibana PR #230053), and versions to come may add
/// others; comparing whole bodies would rewrite every pipeline on every pass.
pub fn holds(seen: &Value, want: &Value) -> bool {
    match (seen, want) {
        (Value::Object(s), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| s.get(k).is_some_and(|sv| holds(sv, wv))),
        (Value::Array(s), Value::Array(w)) => {
            s.len() == w.len() && s.iter().zip(w).all(|(sv, wv)| holds(sv, wv))
        }
        _ => seen == want,
    }
}

pub fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod holds_tests {
    use super::holds;
    use serde_json::json;

    #[test]
    fn server_added_keys_are_not_drift_but_changed_or_missing_ones_are() {
        let want = json!({"description": "d", "processors": [{"inference": {"model_id": "m"}}], "_meta": {"k": 1}});
        // What a 9.2 GET answers for the same body.
        let mut seen = want.clone();
        seen["created_date_millis"] = json!(1_764_979_200_000u64);
        seen["modified_date_millis"] = json!(1_764_979_200_000u64);
        assert!(holds(&seen, &want));
        let mut edited = seen.clone();
        edited["processors"][0]["inference"]["model_id"] = json!("other");
        assert!(!holds(&edited, &want));
        let mut dropped = seen.clone();
        dropped["_meta"].as_object_mut().unwrap().remove("k");
        assert!(!holds(&dropped, &want));
        let mut extra_processor = seen.clone();
        extra_processor["processors"]
            .as_array_mut()
            .unwrap()
            .push(json!({"set": {}}));
        assert!(!holds(&extra_processor, &want));
        assert!(!holds(&json!("x"), &want));
    }
}
