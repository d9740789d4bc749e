//! The `@custom` pipeline hooks: the operator adds one `pipeline` processor calling the router to
//! whatever a hook holds, and removes only that processor again. Elastic's recipe for the DGA
//! package does the same (a `pipeline` processor with `ignore_missing_pipeline` and
//! `ignore_failure`, added to the hook's processors). Pure: bodies in, bodies out.
//!
//! Ownership of the processor is its `tag` (every processor takes one, in every version), so a
//! hook a person or Fleet wrote keeps everything else byte for byte. A hook the operator had to
//! create carries the DgaModel's marker in `_meta`: only such a hook is deleted, and only when
//! our processor was all it held. Older operators wrote the whole hook (marker in `_meta`, one
//! untagged `pipeline` processor calling the router); that form converts to this one.

use serde_json::{Map, Value, json};

use super::{Desired, Holder, MARKER_KEY, Marker, Owner, holder};

/// Prefix of the `tag` on the processor the operator adds; the owner's key follows.
pub const TAG_PREFIX: &str = "dga-operator:";

/// The `tag` of an owner's processor.
pub fn tag_for(owner: &Owner) -> String {
    format!("{TAG_PREFIX}{}", owner.key())
}

/// The owner key a processor's tag names, when the operator added it.
fn tagged_owner(p: &Value) -> Option<&str> {
    p.get("pipeline")?
        .get("tag")?
        .as_str()?
        .strip_prefix(TAG_PREFIX)
}

/// Whether `name` is Fleet's DGA router: `ml_dga_ingest_pipeline`, as the `dga` package installs
/// it with its version prefix (`<version>-ml_dga_ingest_pipeline`) or without.
pub fn is_fleet_router(name: &str) -> bool {
    name == "ml_dga_ingest_pipeline" || name.ends_with("-ml_dga_ingest_pipeline")
}

fn processors(body: &Value) -> Vec<Value> {
    body.get("processors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn called(p: &Value) -> Option<&str> {
    p.get("pipeline")?.get("name")?.as_str()
}

/// How a hook's processors divide: ours (added by this owner, or by an old operator of this
/// owner), another DgaModel's, and the rest (kept as they are).
struct Split {
    ours: Vec<Value>,
    others: Vec<String>,
    rest: Vec<Value>,
    /// Index in `rest` where our first processor stood (so a rewrite keeps its place).
    at: Option<usize>,
}

/// `ours_pipeline` says whether a pipeline id is one of ours (an old-form hook's untagged call
/// to one of them is ours).
fn split(body: &Value, owner: &Owner, ours_pipeline: &dyn Fn(&str) -> bool) -> Split {
    let old_form = holder(Marker::from_meta(body.get("_meta")).as_ref(), owner) == Holder::Us;
    let mut s = Split {
        ours: vec![],
        others: vec![],
        rest: vec![],
        at: None,
    };
    for p in processors(body) {
        let mine = match tagged_owner(&p) {
            Some(o) => {
                if o == owner.key() || owner.adopted.iter().any(|a| a == o) {
                    true
                } else {
                    s.others.push(o.to_string());
                    false
                }
            }
            None => old_form && called(&p).is_some_and(ours_pipeline),
        };
        if mine {
            s.at.get_or_insert(s.rest.len());
            s.ours.push(p);
        } else {
            s.rest.push(p);
        }
    }
    s
}

/// A Fleet DGA router the hook's other processors already call (not ours). A processor an
/// operator added (tagged) is never Fleet's own call, even where it calls Fleet's router (the
/// Fleet route).
fn fleet_call(rest: &[Value], ours_pipeline: &dyn Fn(&str) -> bool) -> Option<String> {
    rest.iter()
        .filter(|p| tagged_owner(p).is_none())
        .filter_map(called)
        .find(|n| is_fleet_router(n) && !ours_pipeline(n))
        .map(str::to_string)
}

fn with_processors(body: &Value, list: Vec<Value>) -> Value {
    let mut out = body.as_object().cloned().unwrap_or_default();
    out.insert("processors".into(), Value::Array(list));
    Value::Object(out)
}

/// What a hook needs.
#[derive(Clone, Debug, PartialEq)]
pub enum HookWant {
    /// As it should be.
    Current,
    /// PUT this body (create, add, update or, when Fleet's router is already there, remove ours).
    Put { body: Value, had_ours: bool },
    /// Fleet's DGA router already runs in this hook (ours is not added): its name.
    FleetPresent(String),
    /// Another DgaModel's processor is there: never enrich twice, never take it.
    OtherOwner(String),
}

impl Desired {
    /// The processor the operator adds to a hook. `ignore_missing_pipeline` is accepted from
    /// 8.3 (ES PR #87354; before, the pipeline is refused with 400 `parse_exception`); when the
    /// cluster's version is not known (a resync glance), it is left to `same_processor`.
    pub fn hook_processor(&self) -> Value {
        let mut p = Map::new();
        p.insert("name".into(), json!(self.router));
        if self.es_version.is_none_or(|v| v >= (8, 3)) {
            p.insert("ignore_missing_pipeline".into(), json!(true));
        }
        p.insert("ignore_failure".into(), json!(true));
        p.insert("tag".into(), json!(tag_for(&self.owner)));
        json!({ "pipeline": p })
    }

    /// The body of a hook the operator creates: only its processor, and its marker.
    fn new_hook(&self) -> Value {
        json!({
            "description": "Calls the DGA enrichment (dga-operator)",
            "processors": [self.hook_processor()],
            "_meta": {MARKER_KEY: self.marker},
        })
    }

    /// What hook `seen` (None: missing) needs, given which pipelines are ours.
    pub fn hook_want(
        &self,
        seen: Option<&Value>,
        ours_pipeline: &dyn Fn(&str) -> bool,
    ) -> HookWant {
        let Some(seen) = seen else {
            return HookWant::Put {
                body: self.new_hook(),
                had_ours: false,
            };
        };
        let s = split(seen, &self.owner, ours_pipeline);
        if let Some(o) = s.others.first() {
            return HookWant::OtherOwner(o.clone());
        }
        if let Some(fleet) = fleet_call(&s.rest, ours_pipeline) {
            // Fleet's own enrichment runs here: ours would score every document twice.
            return if s.ours.is_empty() {
                HookWant::FleetPresent(fleet)
            } else {
                HookWant::Put {
                    body: with_processors(seen, s.rest),
                    had_ours: true,
                }
            };
        }
        let want = self.hook_processor();
        // A hook a DgaModel whose leftovers this one adopts created: now created by this one.
        let taken_over = Marker::from_meta(seen.get("_meta")).is_some_and(|m| {
            m.owner != self.owner.key() && holder(Some(&m), &self.owner) == Holder::Us
        });
        if let [one] = s.ours.as_slice()
            && same_processor(one, &want, self.es_version.is_some())
            && !taken_over
        {
            return HookWant::Current;
        }
        let mut list = s.rest;
        list.insert(s.at.unwrap_or(list.len()), want);
        let mut body = with_processors(seen, list);
        if taken_over && let Some(meta) = body.get_mut("_meta").and_then(Value::as_object_mut) {
            meta.insert(MARKER_KEY.into(), json!(self.marker));
        }
        HookWant::Put {
            body,
            had_ours: !s.ours.is_empty(),
        }
    }
}

/// Our processor as it is vs as it should be. Without the cluster's version,
/// `ignore_missing_pipeline` cannot be judged and is left out of the comparison.
fn same_processor(seen: &Value, want: &Value, version_known: bool) -> bool {
    if version_known {
        return seen == want;
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(p) = v.get_mut("pipeline").and_then(Value::as_object_mut) {
            p.remove("ignore_missing_pipeline");
        }
        v
    };
    strip(seen) == strip(want)
}

/// Removing our processor from a hook.
#[derive(Clone, Debug, PartialEq)]
pub enum Unhook {
    /// Nothing of ours there.
    Nothing,
    /// PUT the hook back without our processor.
    Put(Value),
    /// We created the hook and it held only our processor: delete it.
    Delete,
}

/// What unhooking `body` takes.
pub fn unhook(body: &Value, owner: &Owner, ours_pipeline: &dyn Fn(&str) -> bool) -> Unhook {
    let s = split(body, owner, ours_pipeline);
    if s.ours.is_empty() {
        return Unhook::Nothing;
    }
    let created = holder(Marker::from_meta(body.get("_meta")).as_ref(), owner) == Holder::Us;
    if s.rest.is_empty() && created {
        return Unhook::Delete;
    }
    Unhook::Put(with_processors(body, s.rest))
}

/// Whether a pipeline holds a processor this owner added (a hook it is hooked into).
pub fn holds_ours(body: &Value, owner: &Owner) -> bool {
    processors(body).iter().any(|p| {
        tagged_owner(p).is_some_and(|o| o == owner.key() || owner.adopted.iter().any(|a| a == o))
    })
}

/// A Fleet DGA router an index's pipeline settings or a hook already call, if any (not ours).
pub fn fleet_router_in(body: &Value, ours_pipeline: &dyn Fn(&str) -> bool) -> Option<String> {
    fleet_call(&processors(body), ours_pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Owner;

    fn owner() -> Owner {
        Owner {
            namespace: "ns".into(),
            name: "dga".into(),
            uid: "u".into(),
            adopted: vec![],
        }
    }

    fn desired(version: Option<(u32, u32)>) -> Desired {
        let o = owner();
        Desired {
            marker: Marker::for_owner(&o, "t", "s"),
            owner: o,
            release: "t".into(),
            bundle_sha256: "s".into(),
            model_id: "m".into(),
            release_model_id: "m".into(),
            model_head: Map::new(),
            model: crate::bundle::ModelFile {
                id: "m".into(),
                file: "m_model.json".into(),
                head: Map::new(),
                definition_key: "definition".into(),
                definition_path: "/nonexistent".into(),
                definition_len: 0,
                crc32: "00000000".into(),
            },
            scripts: vec![],
            pipelines: vec![],
            router: "ml_dga_ingest_pipeline".into(),
            wire_indices: vec![],
            hooks: vec!["logs-network_traffic.dns@custom".into()],
            es_version: version,
            fleet: None,
        }
    }

    fn ours(n: &str) -> bool {
        n == "ml_dga_ingest_pipeline"
    }

    #[test]
    fn a_users_hook_keeps_everything_and_gains_one_processor() {
        let d = desired(Some((8, 17)));
        let user = json!({
            "description": "mine", "_meta": {"team": "net"},
            "processors": [{"set": {"field": "a", "value": 1}}],
            "on_failure": [{"set": {"field": "err", "value": 1}}]
        });
        let HookWant::Put { body, had_ours } = d.hook_want(Some(&user), &ours) else {
            panic!()
        };
        assert!(!had_ours);
        assert_eq!(body["description"], "mine");
        assert_eq!(body["_meta"], json!({"team": "net"}));
        assert_eq!(body["on_failure"], user["on_failure"]);
        assert_eq!(body["processors"][0], user["processors"][0]);
        assert_eq!(
            body["processors"][1],
            json!({"pipeline": {"name": "ml_dga_ingest_pipeline", "ignore_missing_pipeline": true, "ignore_failure": true, "tag": "dga-operator:ns/dga"}})
        );
        // Hooked: current, both with and without the version known.
        assert_eq!(d.hook_want(Some(&body), &ours), HookWant::Current);
        assert_eq!(
            desired(None).hook_want(Some(&body), &ours),
            HookWant::Current
        );
        // Unhooked: exactly the user's body again.
        assert_eq!(unhook(&body, &owner(), &ours), Unhook::Put(user));
    }

    #[test]
    fn before_8_3_the_processor_has_no_ignore_missing_pipeline() {
        let p = desired(Some((8, 2))).hook_processor();
        assert!(p["pipeline"].get("ignore_missing_pipeline").is_none());
        assert_eq!(p["pipeline"]["ignore_failure"], true);
    }

    #[test]
    fn a_created_hook_is_deleted_only_while_it_holds_only_ours() {
        let d = desired(Some((9, 2)));
        let HookWant::Put { body, .. } = d.hook_want(None, &ours) else {
            panic!()
        };
        assert_eq!(unhook(&body, &owner(), &ours), Unhook::Delete);
        let mut grown = body.clone();
        grown["processors"]
            .as_array_mut()
            .unwrap()
            .push(json!({"set": {"field": "x", "value": 1}}));
        let Unhook::Put(left) = unhook(&grown, &owner(), &ours) else {
            panic!()
        };
        assert_eq!(
            left["processors"],
            json!([{"set": {"field": "x", "value": 1}}])
        );
    }

    #[test]
    fn an_old_operators_whole_hook_converts_in_place() {
        let d = desired(Some((8, 17)));
        let old = json!({
            "description": "Scores DNS questions for DGA domains (dga-operator)",
            "processors": [{"pipeline": {"name": "ml_dga_ingest_pipeline"}}],
            "_meta": {MARKER_KEY: d.marker},
        });
        let HookWant::Put { body, had_ours } = d.hook_want(Some(&old), &ours) else {
            panic!()
        };
        assert!(had_ours);
        assert_eq!(body["processors"], json!([d.hook_processor()]));
        assert_eq!(body["_meta"], old["_meta"]);
        assert_eq!(unhook(&old, &owner(), &ours), Unhook::Delete);
    }

    #[test]
    fn fleets_router_is_never_doubled_and_another_owner_is_never_taken() {
        let d = desired(Some((8, 17)));
        let fleet = json!({"processors": [{"pipeline": {"name": "2.3.7-ml_dga_ingest_pipeline", "ignore_missing_pipeline": true}}]});
        assert_eq!(
            d.hook_want(Some(&fleet), &ours),
            HookWant::FleetPresent("2.3.7-ml_dga_ingest_pipeline".into())
        );
        // Ours added earlier goes when Fleet's appears.
        let mut both = fleet.clone();
        both["processors"]
            .as_array_mut()
            .unwrap()
            .push(d.hook_processor());
        assert_eq!(
            d.hook_want(Some(&both), &ours),
            HookWant::Put {
                body: fleet.clone(),
                had_ours: true
            }
        );
        let other = json!({"processors": [{"pipeline": {"name": "ml_dga_ingest_pipeline", "tag": "dga-operator:x/y"}}]});
        assert_eq!(
            d.hook_want(Some(&other), &ours),
            HookWant::OtherOwner("x/y".into())
        );
        assert_eq!(unhook(&other, &owner(), &ours), Unhook::Nothing);
    }
}
