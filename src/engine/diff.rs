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
    /// Add (or bring up to date) our `pipeline` processor in a `@custom` hook, creating the hook
    /// when it is missing; everything else in it is kept.
    PutHook {
        id: String,
        reason: Reason,
    },
    /// Remove our processor from a hook (deleting the hook only when we created it and it held
    /// nothing else).
    Unhook {
        id: String,
        reason: Reason,
    },
    /// Point `index.final_pipeline` in a data stream's index template at the router, so every
    /// rollover's new write index is enriched from its first document.
    WireTemplate {
        name: String,
        reason: Reason,
    },
    /// Remove from an index template the `index.final_pipeline` we set.
    UnwireTemplate {
        name: String,
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
            | Action::UnwireIndex { reason, .. }
            | Action::PutHook { reason, .. }
            | Action::Unhook { reason, .. }
            | Action::WireTemplate { reason, .. }
            | Action::UnwireTemplate { reason, .. } => *reason,
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
            Action::PutHook { id, reason } => {
                write!(
                    f,
                    "{reason} the enrichment's processor in pipeline hook {id}"
                )
            }
            Action::Unhook { id, reason } => {
                write!(
                    f,
                    "{reason}: remove the enrichment's processor from pipeline hook {id}"
                )
            }
            Action::WireTemplate { name, reason } => {
                write!(f, "{reason} index.final_pipeline of index template {name}")
            }
            Action::UnwireTemplate { name, reason } => {
                write!(
                    f,
                    "{reason}: unset index.final_pipeline of index template {name}"
                )
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

    // Model (the Fleet package's is Fleet's).
    match o.models.get(&d.model_id).filter(|_| d.fleet.is_none()) {
        None if d.fleet.is_some() => {}
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
    let ours_pipeline = |name: &str| ours_pipeline(d, o, owned, name);

    // Hooks: our processor added to what each holds, never a replaced body.
    for id in &d.hooks {
        use super::hooks::HookWant;
        match d.hook_want(o.pipelines.get(id), &ours_pipeline) {
            HookWant::Current | HookWant::FleetPresent(_) => {}
            HookWant::OtherOwner(other) => plan.conflicts.push(format!(
                "pipeline hook {id} already calls the enrichment for DgaModel {other} (a hook is enriched once)"
            )),
            HookWant::Put { body, had_ours } => {
                let reason = if super::hooks::fleet_router_in(&body, &ours_pipeline).is_some() {
                    Reason::Stale
                } else if had_ours {
                    let seen = o.pipelines.get(id);
                    let old_form = seen.is_some_and(|b| !super::hooks::holds_ours(b, &d.owner));
                    let other_router = seen.is_some_and(|b| {
                        crate::bundle::processors_of(b).iter().any(|p| {
                            p.pointer("/pipeline/tag").and_then(Value::as_str)
                                == Some(super::hooks::tag_for(&d.owner).as_str())
                                && p.pointer("/pipeline/name").and_then(Value::as_str)
                                    != Some(d.router.as_str())
                        })
                    });
                    if old_form || other_router {
                        Reason::Upgrade
                    } else {
                        Reason::Repair
                    }
                } else {
                    create_reason(owned.hooks.contains(id))
                };
                plan.actions.push(Action::PutHook {
                    id: id.clone(),
                    reason,
                });
            }
        }
    }

    let hooked: Vec<&String> = d.hooks.iter().collect();
    // Already enriched through a pipeline setting: the router itself, a hook of ours, or
    // Fleet's DGA router (directly or through a pipeline that calls it).
    let enriched_by = |p: Option<&str>| {
        p.is_some_and(|p| {
            p == d.router
                || hooked.iter().any(|h| h.as_str() == p)
                || fleet_enriches(o, p, &ours_pipeline)
        })
    };
    for (index, settings) in &o.indices {
        let wanted = covered(&d.wire_indices, index);
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
        if enriched_by(settings.default_pipeline.as_deref())
            || (fin != Some(d.router.as_str())
                && fin.is_some_and(|f| fleet_enriches(o, f, &ours_pipeline)))
        {
            // Already enriched: a final pipeline would score twice.
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

    // The index templates of the data streams wired above: a rollover's new write index takes
    // its settings from there.
    for (name, t) in &o.templates {
        let fin = super::templates::final_pipeline(t);
        let fin = fin.as_deref();
        if !o.stream_templates.contains(name) {
            if owned.templates.contains(name) && fin.is_some_and(ours_pipeline) {
                plan.actions.push(Action::UnwireTemplate {
                    name: name.clone(),
                    reason: Reason::Stale,
                });
            }
            continue;
        }
        if enriched_by(super::templates::default_pipeline(t).as_deref())
            || (fin != Some(d.router.as_str())
                && fin.is_some_and(|f| fleet_enriches(o, f, &ours_pipeline)))
        {
            continue;
        }
        match fin {
            Some(f) if f == d.router => {}
            None => plan.actions.push(Action::WireTemplate { name: name.clone(), reason: create_reason(owned.templates.contains(name)) }),
            Some(f) if ours_pipeline(f) => plan.actions.push(Action::WireTemplate { name: name.clone(), reason: Reason::Upgrade }),
            Some(_) if overwrite => plan.actions.push(Action::WireTemplate { name: name.clone(), reason: Reason::Adopt }),
            Some(f) => plan.conflicts.push(format!(
                "index template {name} already has index.final_pipeline {f} (set overwrite: true to replace it, or spec.enrichment.indices to skip its data streams)"
            )),
        }
    }

    // Hooks no longer named (or whose pipeline is gone from the spec): our processor goes,
    // before the router it calls.
    for (id, body) in &o.pipelines {
        if d.hooks.contains(id) {
            continue;
        }
        let recorded = owned.hooks.contains(id);
        if (recorded || super::hooks::holds_ours(body, &d.owner))
            && super::hooks::unhook(body, &d.owner, &ours_pipeline) != super::hooks::Unhook::Nothing
        {
            plan.actions.push(Action::Unhook {
                id: id.clone(),
                reason: Reason::Stale,
            });
        }
    }

    // Deletions, after the switch: pipelines, scripts, then models.
    let desired_pipelines: Vec<&String> = d.pipelines.iter().map(|(id, _)| id).collect();
    for (id, body) in o.pipelines.iter().rev() {
        if desired_pipelines.contains(&id)
            || d.hooks.contains(id)
            || super::hooks::holds_ours(body, &d.owner)
        {
            // Hooks are unhooked above (and deleted there when only ours was in them).
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
        if super::hooks::holds_ours(p, owner) {
            // A hook: only our processor in it is ours (recorded below), even in one we
            // created.
            continue;
        }
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
    for (id, p) in &o.pipelines {
        if super::hooks::holds_ours(p, owner) {
            ids.hooks.insert(id.clone());
        }
    }
    for (name, t) in &o.templates {
        if super::templates::final_pipeline(t).is_some_and(|f| ids.pipelines.contains(&f))
            && (known.templates.contains(name) || o.stream_templates.contains(name))
        {
            ids.templates.insert(name.clone());
        }
    }
    ids
}

/// Whether a pipeline id is ours: the router, one the owner recorded, or one carrying its
/// marker.
fn ours_pipeline(d: &Desired, o: &Observed, owned: &Ids, name: &str) -> bool {
    // On the Fleet route the router is Fleet's: a call to it that is not our tagged processor
    // is Elastic's recipe done by hand, and the hook is enriched already.
    (d.fleet.is_none() && name == d.router)
        || owned.pipelines.contains(name)
        || o.pipelines.get(name).is_some_and(|p| {
            holder(Marker::from_meta(p.get("_meta")).as_ref(), &d.owner) == Holder::Us
        })
}

/// Whether pipeline `p` is Fleet's DGA router, or a pipeline read in this pass that calls it.
fn fleet_enriches(o: &Observed, p: &str, ours: &dyn Fn(&str) -> bool) -> bool {
    (super::hooks::is_fleet_router(p) && !ours(p))
        || o.pipelines
            .get(p)
            .is_some_and(|b| super::hooks::fleet_router_in(b, ours).is_some())
}

/// Where Fleet's own DGA enrichment already runs, so the operator does not add its own (for a
/// condition): hooks that call Fleet's router, and wired indices or data stream templates
/// whose pipeline settings do.
pub fn fleet_enriched(d: &Desired, o: &Observed, owned: &Ids) -> Vec<String> {
    let ours = |name: &str| ours_pipeline(d, o, owned, name);
    let mut out = Vec::new();
    for id in &d.hooks {
        if let Some(b) = o.pipelines.get(id)
            && let Some(f) = super::hooks::fleet_router_in(b, &ours)
        {
            out.push(format!("pipeline hook {id} calls {f}"));
        }
    }
    let via = |p: Option<String>| p.filter(|p| fleet_enriches(o, p, &ours));
    for (index, s) in &o.indices {
        if !covered(&d.wire_indices, index) {
            continue;
        }
        if let Some(p) = via(s.default_pipeline.clone()).or_else(|| via(s.final_pipeline.clone())) {
            out.push(format!("index {index} runs {p}"));
        }
    }
    for (name, t) in &o.templates {
        if !o.stream_templates.contains(name) {
            continue;
        }
        if let Some(p) = via(super::templates::default_pipeline(t))
            .or_else(|| via(super::templates::final_pipeline(t)))
        {
            out.push(format!("index template {name} runs {p}"));
        }
    }
    out
}

/// Whether index patterns cover an index as `GET {patterns}/_settings` resolves them: by name,
/// or as a backing index of a data stream a pattern names or matches.
pub fn covered(patterns: &[String], index: &str) -> bool {
    let stream = super::observe::backing_stream(index);
    patterns
        .iter()
        .any(|p| wildcard(p, index) || stream.is_some_and(|s| wildcard(p, s)))
}

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

/// `*` wildcards, as in index patterns.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::observe::IndexPipelines;
    use crate::engine::{Marker, Owner};
    use serde_json::json;

    fn desired() -> Desired {
        let owner = Owner {
            namespace: "ns".into(),
            name: "dga".into(),
            uid: "u".into(),
            adopted: vec![],
        };
        Desired {
            marker: Marker::for_owner(&owner, "t", "s"),
            owner,
            release: "t".into(),
            bundle_sha256: "s".into(),
            model_id: "m".into(),
            release_model_id: "m".into(),
            model_head: Default::default(),
            model: crate::bundle::ModelFile {
                id: "m".into(),
                file: "m_model.json".into(),
                head: Default::default(),
                definition_key: "definition".into(),
                definition_path: "/nonexistent".into(),
                definition_len: 0,
                crc32: "00000000".into(),
            },
            scripts: vec![],
            pipelines: vec![],
            router: "r".into(),
            wire_indices: vec!["packetbeat-*".into()],
            hooks: vec![],
            es_version: Some((8, 17)),
            fleet: None,
        }
    }

    fn index(default: Option<&str>, fin: Option<&str>) -> IndexPipelines {
        IndexPipelines {
            default_pipeline: default.map(str::to_string),
            final_pipeline: fin.map(str::to_string),
        }
    }

    #[test]
    fn data_streams_are_wired_in_backing_indices_and_template_never_over_fleet() {
        let d = desired();
        let backing = ".ds-packetbeat-8.17.0-2026.12.05-000001";
        let fleet_index = "packetbeat-fleet";
        let mut o = Observed::default();
        o.model_ok(&d);
        o.indices.insert(backing.into(), index(None, None));
        o.indices.insert(
            fleet_index.into(),
            index(Some("2.3.7-ml_dga_ingest_pipeline"), None),
        );
        o.templates.insert(
            "packetbeat-8.17.0".into(),
            json!({"index_patterns": ["packetbeat-8.17.0"], "template": {"settings": {"index": {"number_of_shards": "1"}}}}),
        );
        o.stream_templates.insert("packetbeat-8.17.0".into());
        let plan = diff(&d, &o, &Ids::default(), false);
        assert_eq!(
            plan.actions,
            vec![
                Action::WireIndex {
                    index: backing.into(),
                    reason: Reason::Create
                },
                Action::WireTemplate {
                    name: "packetbeat-8.17.0".into(),
                    reason: Reason::Create
                },
            ]
        );
        assert_eq!(
            fleet_enriched(&d, &o, &Ids::default()),
            ["index packetbeat-fleet runs 2.3.7-ml_dga_ingest_pipeline"]
        );

        // A template someone else pointed elsewhere: a conflict unless overwrite.
        o.templates.get_mut("packetbeat-8.17.0").unwrap()["template"]["settings"]["index"]["final_pipeline"] =
            json!("theirs");
        let plan = diff(&d, &o, &Ids::default(), false);
        assert!(plan.conflicts[0].contains("index template packetbeat-8.17.0"));
        let plan = diff(&d, &o, &Ids::default(), true);
        assert!(plan.actions.contains(&Action::WireTemplate {
            name: "packetbeat-8.17.0".into(),
            reason: Reason::Adopt
        }));
    }

    impl Observed {
        fn model_ok(&mut self, d: &Desired) {
            self.models.insert(
                d.model_id.clone(),
                json!({"metadata": {crate::engine::MARKER_KEY: d.marker}}),
            );
        }
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;
    use crate::engine::Owner;
    use crate::engine::build::{Wiring, build_fleet};
    use serde_json::json;

    const HOOK: &str = "logs-network_traffic.dns@custom";

    fn fleet() -> Desired {
        let owner = Owner {
            namespace: "ns".into(),
            name: "dga".into(),
            uid: "u".into(),
            adopted: vec![],
        };
        let wiring = Wiring {
            custom_pipelines: vec![HOOK.into()],
            indices: vec![],
        };
        let mut d = build_fleet(&owner, &wiring, "2.3.7", "dga_1611725_2.0", "registry");
        d.es_version = Some((9, 2));
        d
    }

    fn with_hook(body: serde_json::Value) -> Observed {
        let mut o = Observed::default();
        o.pipelines.insert(HOOK.into(), body);
        o
    }

    #[test]
    fn the_package_is_never_written_and_the_hook_calls_its_router() {
        let d = fleet();
        let plan = diff(&d, &Observed::default(), &Ids::default(), false);
        assert_eq!(
            plan.actions,
            vec![Action::PutHook {
                id: HOOK.into(),
                reason: Reason::Create
            }]
        );
        assert!(plan.conflicts.is_empty());
        // Fleet's model, seen: neither a conflict nor deleted.
        let mut o = Observed::default();
        o.models
            .insert("dga_1611725_2.0".into(), json!({"metadata": {}}));
        let plan = diff(&d, &o, &Ids::default(), false);
        assert!(plan.conflicts.is_empty(), "{plan:?}");
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::DeleteModel { .. }))
        );
    }

    #[test]
    fn elastics_recipe_done_by_hand_is_not_doubled() {
        // A person followed Elastic's recipe: an untagged `pipeline` processor calling the
        // package's router. The hook is enriched; ours would score every document twice.
        let d = fleet();
        let by_hand = json!({"processors": [
            {"pipeline": {"name": "2.3.7-ml_dga_ingest_pipeline", "ignore_missing_pipeline": true, "ignore_failure": true}}
        ]});
        let o = with_hook(by_hand);
        let plan = diff(&d, &o, &Ids::default(), false);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(
            fleet_enriched(&d, &o, &Ids::default()),
            vec![format!(
                "pipeline hook {HOOK} calls 2.3.7-ml_dga_ingest_pipeline"
            )]
        );
        // Our own processor calling the same router is ours, not Fleet's: current, no repair.
        let ours = json!({"processors": [d.hook_processor()]});
        let o = with_hook(ours);
        assert!(diff(&d, &o, &Ids::default(), false).is_empty());
        assert!(fleet_enriched(&d, &o, &Ids::default()).is_empty());
        // After a version bump our processor moves to the new router (an upgrade).
        let old = json!({"processors": [{"pipeline": {
            "name": "2.2.0-ml_dga_ingest_pipeline", "ignore_missing_pipeline": true,
            "ignore_failure": true, "tag": "dga-operator:ns/dga"}}]});
        let plan = diff(&d, &with_hook(old), &Ids::default(), false);
        assert_eq!(
            plan.actions,
            vec![Action::PutHook {
                id: HOOK.into(),
                reason: Reason::Upgrade
            }]
        );
    }
}
