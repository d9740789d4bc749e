//! The ML-DGA detection rules: what should be in Kibana ([`desired_rules`]) and what to do about
//! what is there ([`diff`]). Both are pure; [`observe`] and [`apply`] do the I/O.
//!
//! Ownership. Every rule the operator writes carries the [`DGA_TAG`] tag and an ownership tag
//! [`owner_tag`]`(namespace/name)`. Only rules with our ownership tag are ever updated or
//! deleted. A rule that has one of our `rule_id`s but not our ownership tag (made by hand, by the
//! old CLI, by another `DgaPackage`, or an Elastic prebuilt rule) is reported as
//! [`RuleAction::Conflict`]; the caller turns it into an update only when the user asked to
//! overwrite ([`overwrite_conflicts`]). Rules tagged `ML-DGA` without our ownership tag and with
//! a `rule_id` we do not want are never touched.
//!
//! Drift. An existing rule is updated only when a field of our desired body differs from what
//! Kibana holds, after normalisation ([`field_matches`]): fields Kibana adds on its own are
//! ignored, `null`/empty values equal a missing field, numbers compare by value, the string
//! arrays `tags`, `index`, `author`, `references`, `false_positives` and
//! `machine_learning_job_id` compare as sets (a lone job id string equals a one-element array),
//! and nested objects compare on the keys we set.
//!
//! Enabled. **The user's enable/disable wins over `spec.rules.enabled`, which only applies to
//! newly created rules.** `enabled` is never compared for an existing rule, and every update
//! carries Kibana's current `enabled` value, so a rule switched off by hand in Kibana stays off
//! (and one switched on stays on). Updates are full replacements (`PUT`), so they also carry
//! over the user's `exceptions_list` and `actions` when our body does not set them.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::content::{self, own_rule_id};
use super::version::{KibanaFeatures, StackVersion};
use crate::error::Error;
use crate::kibana::DGA_TAG;
use crate::kibana::client::{KibanaClient, kql_quote};

/// Prefix of the ownership tag.
pub const OWNER_TAG_PREFIX: &str = "dga-operator:owner:";

/// The ownership tag of a `DgaPackage` named `owner` (`"namespace/name"`).
pub fn owner_tag(owner: &str) -> String {
    format!("{OWNER_TAG_PREFIX}{owner}")
}

pub use super::content::DEFAULT_INDEX;

/// The operator's rule_ids of the package's rules: [`super::content::own_rule_id`] of Elastic's
/// (a unit test in content.rs derives them again), written out so that they can be constants.
pub const RULE_PREDICTION: &str = "2c70d095-f572-8650-af31-0f8167bf7206";
pub const RULE_PROBABILITY: &str = "738b6489-95d5-828d-bca1-9b5a19fea1e1";
pub const RULE_SUNBURST: &str = "17556132-f39a-8a66-b0ee-02577d3afeb6";
pub const RULE_ML_HIGH_SUM: &str = "bfd1543f-f4f3-85b9-97b8-4aee14cf560c";

/// Fields Kibana manages itself; removed from rules shipped in a release (an export) before
/// they are sent back.
const SERVER_FIELDS: &[&str] = &[
    "id",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
    "revision",
    "immutable",
    "rule_source",
    "execution_summary",
    "outcome",
    "alias_target_id",
    "alias_purpose",
];

/// String arrays whose order carries no meaning.
const SET_FIELDS: &[&str] = &[
    "tags",
    "index",
    "author",
    "references",
    "false_positives",
    "machine_learning_job_id",
];

/// What the desired rule set is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesInput {
    /// Rules shipped in the release (Kibana rule JSON with a `rule_id`); empty → the built-in set.
    pub source_rules: Vec<Value>,
    /// `rule_id`s to install; `None` = all.
    pub selected: Option<Vec<String>>,
    /// Index patterns for query rules; empty → [`DEFAULT_INDEX`].
    pub index: Vec<String>,
    /// Whether newly created rules start enabled (existing rules keep their state).
    pub enabled: bool,
    /// `"namespace/name"` of the owning resource.
    pub owner: String,
    /// What the target Kibana accepts and ships.
    pub kibana: KibanaFeatures,
    /// The anomaly detection job the machine-learning rule watches.
    pub job_id: String,
}

impl Default for RulesInput {
    fn default() -> Self {
        RulesInput {
            source_rules: Vec::new(),
            selected: None,
            index: default_index(),
            enabled: true,
            owner: String::new(),
            kibana: KibanaFeatures::new(StackVersion::new(8, 17, 0)),
            job_id: crate::engine::mljob::JOB_ID.to_string(),
        }
    }
}

pub fn default_index() -> Vec<String> {
    DEFAULT_INDEX.iter().map(|s| s.to_string()).collect()
}

fn rule_id(rule: &Value) -> Option<&str> {
    rule.get("rule_id").and_then(Value::as_str)
}

fn tags(rule: &Value) -> Vec<&str> {
    rule.get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn has_tag(rule: &Value, tag: &str) -> bool {
    tags(rule).contains(&tag)
}

/// `rule_id`s in `input.selected` that the rule set (release or built-in) does not have.
pub fn unknown_selected(input: &RulesInput) -> Vec<String> {
    let Some(sel) = &input.selected else {
        return Vec::new();
    };
    let source = source(input);
    sel.iter()
        .filter(|id| {
            let want = selector(id);
            !source.iter().any(|r| rule_id(r) == Some(want.as_str()))
        })
        .cloned()
        .collect()
}

/// A `ruleIds` entry as the rule_id the operator writes: Elastic's ids (current or legacy)
/// name the operator's rule derived from them.
fn selector(id: &str) -> String {
    content::elastic_id(id)
        .map(own_rule_id)
        .unwrap_or_else(|| id.to_string())
}

/// The rules to write: the release's, or Elastic's four as built for this Kibana. A release
/// rule under one of Elastic's rule_ids is moved to the operator's id for it.
fn source(input: &RulesInput) -> Vec<Value> {
    if input.source_rules.is_empty() {
        content::builtin_rules(&input.kibana, &input.job_id)
    } else {
        input
            .source_rules
            .iter()
            .cloned()
            .map(|mut r| {
                if let Some(e) = rule_id(&r).and_then(content::elastic_id) {
                    r["rule_id"] = Value::String(own_rule_id(e));
                }
                if r.get("type").and_then(Value::as_str) == Some("machine_learning") {
                    r["machine_learning_job_id"] = json!([input.job_id]);
                }
                r
            })
            .collect()
    }
}

/// The rule bodies (Kibana create shape) the owner wants in Kibana. Rules without a `rule_id`
/// are skipped (they could not be found again), as are duplicates of an earlier `rule_id`.
pub fn desired_rules(input: &RulesInput) -> Vec<Value> {
    let own = owner_tag(&input.owner);
    let index: Vec<Value> = if input.index.is_empty() {
        default_index()
    } else {
        input.index.clone()
    }
    .into_iter()
    .map(Value::String)
    .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for rule in source(input) {
        let Value::Object(mut r) = rule else { continue };
        let Some(id) = r.get("rule_id").and_then(Value::as_str).map(String::from) else {
            continue;
        };
        if input
            .selected
            .as_ref()
            .is_some_and(|sel| !sel.iter().any(|s| selector(s) == id))
        {
            continue;
        }
        if !seen.insert(id) {
            continue;
        }
        for k in SERVER_FIELDS {
            r.remove(*k);
        }
        // Fields this Kibana's rule bodies do not take yet (a release rule may carry them).
        r.retain(|k, _| input.kibana.accepts(k));
        // Tags: theirs, minus any other owner's tag, plus ML-DGA and ours.
        let mut t: Vec<Value> = Vec::new();
        let old = r
            .get("tags")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for x in old.into_iter().chain([json!(DGA_TAG), json!(own)]) {
            if let Some(s) = x.as_str()
                && (s == own || !s.starts_with(OWNER_TAG_PREFIX))
                && !t.contains(&x)
            {
                t.push(x);
            }
        }
        r.insert("tags".into(), Value::Array(t));
        let ty = r.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(ty, "machine_learning" | "esql") {
            r.insert("index".into(), Value::Array(index.clone()));
            r.remove("data_view_id");
        }
        r.entry("author").or_insert_with(|| json!(["dga-operator"]));
        r.insert("enabled".into(), Value::Bool(input.enabled));
        out.push(Value::Object(r));
    }
    out
}

/// One step towards the desired rule set.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// `POST` this body.
    Create(Value),
    /// `PUT` this body (Kibana's current `enabled` already carried in).
    Update {
        rule_id: String,
        body: Value,
        reason: String,
    },
    /// Remove a rule we own that is no longer wanted.
    Delete { rule_id: String },
    /// A rule with one of our `rule_id`s that we do not own: left alone.
    Conflict { rule_id: String, detail: String },
}

impl RuleAction {
    pub fn rule_id(&self) -> &str {
        match self {
            RuleAction::Create(b) => rule_id(b).unwrap_or_default(),
            RuleAction::Update { rule_id, .. }
            | RuleAction::Delete { rule_id }
            | RuleAction::Conflict { rule_id, .. } => rule_id,
        }
    }

    /// A short description for plans, logs and events.
    pub fn describe(&self) -> String {
        match self {
            RuleAction::Create(b) => format!(
                "create rule {} ({})",
                self.rule_id(),
                b.get("name").and_then(Value::as_str).unwrap_or("")
            ),
            RuleAction::Update {
                rule_id, reason, ..
            } => format!("update rule {rule_id}: {reason}"),
            RuleAction::Delete { rule_id } => format!("delete rule {rule_id}"),
            RuleAction::Conflict { rule_id, detail } => {
                format!("rule {rule_id} conflicts: {detail}")
            }
        }
    }
}

/// What to do so that Kibana holds `desired`, given the rules `observed` in the space (our
/// owned rules plus any rule with a desired `rule_id`; see [`observe`]). See the module comment
/// for what is compared.
pub fn diff(desired: &[Value], observed: &[Value], owner_tag: &str) -> Vec<RuleAction> {
    let mut out = Vec::new();
    for want in desired {
        let Some(id) = rule_id(want) else { continue };
        match observed.iter().find(|o| rule_id(o) == Some(id)) {
            None => out.push(RuleAction::Create(want.clone())),
            Some(have) if !has_tag(have, owner_tag) => out.push(RuleAction::Conflict {
                rule_id: id.to_string(),
                detail: conflict_detail(have, owner_tag),
            }),
            Some(have) => {
                let differing = differing_fields(want, have);
                if !differing.is_empty() {
                    out.push(RuleAction::Update {
                        rule_id: id.to_string(),
                        body: update_body(want, have),
                        reason: format!(
                            "differs from the desired rule in {}",
                            differing.join(", ")
                        ),
                    });
                }
            }
        }
    }
    let mut deleted = BTreeSet::new();
    for have in observed {
        let Some(id) = rule_id(have) else { continue };
        if has_tag(have, owner_tag)
            && !desired.iter().any(|d| rule_id(d) == Some(id))
            && deleted.insert(id)
        {
            out.push(RuleAction::Delete {
                rule_id: id.to_string(),
            });
        }
    }
    out
}

/// Whether Kibana holds `rule` as one of Elastic's prebuilt rules (installed from the
/// `security_detection_engine` package, not written through the rules API).
pub fn is_prebuilt(rule: &Value) -> bool {
    rule.get("immutable").and_then(Value::as_bool) == Some(true)
        || rule.pointer("/rule_source/type").and_then(Value::as_str) == Some("external")
}

/// The whole rule plan for one space: [`diff`] of `desired` against `observed`, with
///
/// - a desired rule dropped when Elastic's prebuilt rule it stands for is installed (a person
///   installed it; it is used as it is, never duplicated or taken);
/// - rules left under one of Elastic's rule_ids (by the dga-operator CLI, an older operator
///   build, or a person): ours are deleted (the operator's own rule_id replaces them); the
///   CLI's and a person's are a [`RuleAction::Conflict`], or, with `overwrite`, adopted: deleted
///   and replaced by the operator's rule, which keeps their enabled state;
/// - with `overwrite`, conflicts on the operator's own rule_ids taken over
///   ([`overwrite_conflicts`]). Another DgaModel's rules are never taken.
pub fn plan(
    desired: &[Value],
    observed: &[Value],
    owner_tag: &str,
    overwrite: bool,
) -> Vec<RuleAction> {
    let installed_prebuilt: BTreeSet<&str> = observed
        .iter()
        .filter(|r| is_prebuilt(r))
        .filter_map(rule_id)
        .filter_map(content::elastic_id)
        .collect();
    let mut desired: Vec<Value> = desired
        .iter()
        .filter(|d| {
            !rule_id(d)
                .and_then(content::elastic_of_own)
                .is_some_and(|e| installed_prebuilt.contains(e))
        })
        .cloned()
        .collect();
    let mut leftovers = Vec::new();
    for have in observed {
        let Some(id) = rule_id(have) else { continue };
        let Some(elastic) = content::elastic_id(id) else {
            continue;
        };
        if is_prebuilt(have) || has_tag(have, owner_tag) {
            continue; // Elastic's own rule, or ours (deleted by the diff as no longer wanted)
        }
        let other = tags(have)
            .into_iter()
            .find_map(|t| t.strip_prefix(OWNER_TAG_PREFIX))
            .map(String::from);
        if other.as_deref().is_some_and(|o| !o.starts_with('/')) {
            continue; // another DgaModel's: it migrates its own rules
        }
        let own = own_rule_id(elastic);
        let name = have.get("name").and_then(Value::as_str).unwrap_or("");
        let by = if other.is_some() {
            "the dga-operator CLI"
        } else {
            "a person or older tooling"
        };
        if !overwrite {
            leftovers.push(RuleAction::Conflict {
                rule_id: id.to_string(),
                detail: format!(
                    "rule \"{name}\" holds Elastic's rule_id {id} (left by {by}); set overwrite \
                     to replace it (by Elastic's prebuilt rule where Kibana offers it, else by the \
                     operator's rule {own})"
                ),
            });
            continue;
        }
        leftovers.push(RuleAction::Delete {
            rule_id: id.to_string(),
        });
        // The replacement keeps the adopted rule's enabled state.
        if let (Some(e), Some(d)) = (
            have.get("enabled").and_then(Value::as_bool),
            desired
                .iter_mut()
                .find(|d| rule_id(d) == Some(own.as_str())),
        ) {
            d["enabled"] = Value::Bool(e);
        }
    }
    let mut actions = diff(&desired, observed, owner_tag);
    if overwrite {
        actions = overwrite_conflicts(actions, &desired, observed);
    }
    leftovers.extend(actions);
    leftovers
}

/// For a user who asked to overwrite: each [`RuleAction::Conflict`] becomes an
/// [`RuleAction::Update`] that takes the rule over (its `enabled` state kept).
pub fn overwrite_conflicts(
    actions: Vec<RuleAction>,
    desired: &[Value],
    observed: &[Value],
) -> Vec<RuleAction> {
    actions
        .into_iter()
        .map(|a| match a {
            RuleAction::Conflict {
                rule_id: id,
                detail,
            } => {
                let want = desired.iter().find(|d| rule_id(d) == Some(id.as_str()));
                let have = observed.iter().find(|o| rule_id(o) == Some(id.as_str()));
                match (want, have) {
                    (Some(w), Some(h)) => RuleAction::Update {
                        body: update_body(w, h),
                        reason: format!("overwriting a rule we do not own ({detail})"),
                        rule_id: id,
                    },
                    _ => RuleAction::Conflict {
                        rule_id: id,
                        detail,
                    },
                }
            }
            other => other,
        })
        .collect()
}

fn conflict_detail(have: &Value, owner_tag: &str) -> String {
    let other_owner = tags(have)
        .into_iter()
        .find_map(|t| t.strip_prefix(OWNER_TAG_PREFIX));
    let name = have.get("name").and_then(Value::as_str).unwrap_or("");
    if let Some(o) = other_owner {
        format!("rule \"{name}\" is managed by the DgaPackage {o}")
    } else if have.get("immutable").and_then(Value::as_bool) == Some(true)
        || have.pointer("/rule_source/type").and_then(Value::as_str) == Some("external")
    {
        format!("rule \"{name}\" is an Elastic prebuilt rule; set overwrite to take it over")
    } else {
        format!(
            "rule \"{name}\" exists without the ownership tag {owner_tag} (made by hand or by \
             other tooling); set overwrite to take it over"
        )
    }
}

/// The `PUT` body: our desired rule, with Kibana's current `enabled` and the user's
/// `exceptions_list` / `actions` carried over.
fn update_body(want: &Value, have: &Value) -> Value {
    let mut body = want.as_object().cloned().unwrap_or_default();
    if let Some(e) = have.get("enabled").and_then(Value::as_bool) {
        body.insert("enabled".into(), Value::Bool(e));
    }
    for k in ["exceptions_list", "actions"] {
        if !body.contains_key(k)
            && let Some(v) = have.get(k)
            && v.as_array().is_some_and(|a| !a.is_empty())
        {
            body.insert(k.into(), v.clone());
        }
    }
    Value::Object(body)
}

/// Top-level fields of `want` (except `enabled` and `rule_id`) whose value Kibana does not hold.
pub fn differing_fields(want: &Value, have: &Value) -> Vec<String> {
    let empty = Map::new();
    let w = want.as_object().unwrap_or(&empty);
    let mut out = Vec::new();
    for (k, v) in w {
        if k == "enabled" || k == "rule_id" {
            continue;
        }
        if !field_matches(k, v, have.get(k)) {
            out.push(k.clone());
        }
    }
    out
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn string_set(v: &Value) -> Option<BTreeSet<String>> {
    match v {
        Value::String(s) => Some(BTreeSet::from([s.clone()])),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        _ => None,
    }
}

/// Whether Kibana's value `have` for field `key` satisfies our value `want`.
pub fn field_matches(key: &str, want: &Value, have: Option<&Value>) -> bool {
    let have = have.unwrap_or(&Value::Null);
    if is_empty(want) && is_empty(have) {
        return true;
    }
    if SET_FIELDS.contains(&key)
        && let (Some(a), Some(b)) = (string_set(want), string_set(have))
    {
        return a == b;
    }
    value_matches(want, have)
}

fn value_matches(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Object(a), Value::Object(b)) => a.iter().all(|(k, v)| match b.get(k) {
            Some(h) => value_matches(v, h) || (is_empty(v) && is_empty(h)),
            None => is_empty(v),
        }),
        (Value::Object(a), Value::Null) => a.values().all(is_empty),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| value_matches(x, y))
        }
        (a, b) => a == b || (is_empty(a) && is_empty(b)),
    }
}

/// The rules [`diff`] needs from one space: every rule carrying `owner_tag`, and every rule
/// whose `rule_id` is desired (to see conflicts), in one `_find` per 25 desired rules.
pub async fn observe(
    client: &KibanaClient,
    space: &str,
    desired: &[Value],
    owner_tag: &str,
) -> Result<Vec<Value>, Error> {
    let mut ids: Vec<&str> = desired.iter().filter_map(rule_id).collect();
    // Elastic's ids too: a rule left under one blocks or duplicates ours (see [`plan`]).
    ids.extend(content::ELASTIC_RULE_IDS);
    ids.extend(content::LEGACY_RULE_IDS.iter().map(|(old, _)| *old));
    let owned = format!("alert.attributes.tags:{}", kql_quote(owner_tag));
    let mut out: Vec<Value> = Vec::new();
    let chunks: Vec<&[&str]> = if ids.is_empty() {
        vec![&[]]
    } else {
        ids.chunks(25).collect()
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut terms: Vec<String> = chunk
            .iter()
            .map(|id| format!("alert.attributes.params.ruleId:{}", kql_quote(id)))
            .collect();
        if i == 0 {
            terms.insert(0, owned.clone());
        }
        for r in client.find_rules(space, &terms.join(" OR ")).await? {
            if !out.iter().any(|o| o.get("id") == r.get("id")) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Carries out one action. A [`RuleAction::Conflict`] is returned as [`Error::Conflict`].
pub async fn apply(client: &KibanaClient, space: &str, action: &RuleAction) -> Result<(), Error> {
    match action {
        RuleAction::Create(body) => client.create_rule(space, body).await.map(|_| ()),
        RuleAction::Update { body, .. } => client.update_rule(space, body).await.map(|_| ()),
        RuleAction::Delete { rule_id } => client.delete_rule(space, rule_id).await,
        RuleAction::Conflict { rule_id, detail } => Err(Error::Conflict(format!(
            "Kibana detection rule {rule_id}: {detail}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "security/dga";

    fn input() -> RulesInput {
        RulesInput {
            owner: OWNER.into(),
            ..Default::default()
        }
    }

    /// What Kibana would hold after creating `body`: its own fields added, arrays reordered.
    fn as_stored(body: &Value) -> Value {
        let mut r = body.clone();
        let o = r.as_object_mut().unwrap();
        o.insert("id".into(), json!(format!("so-{}", rule_id(body).unwrap())));
        o.insert("created_at".into(), json!("2025-01-01T00:00:00.000Z"));
        o.insert("revision".into(), json!(0));
        o.insert("immutable".into(), json!(false));
        o.entry("max_signals").or_insert(json!(100));
        o.entry("exceptions_list").or_insert(json!([]));
        o.entry("actions").or_insert(json!([]));
        o.entry("related_integrations").or_insert(json!([]));
        o.entry("references").or_insert(json!([]));
        if let Some(t) = o.get_mut("tags").and_then(Value::as_array_mut) {
            t.reverse();
        }
        if let Some(j) = o
            .get("machine_learning_job_id")
            .and_then(Value::as_array)
            .cloned()
        {
            // Older Kibana answers a single job id as a string.
            o.insert("machine_learning_job_id".into(), j[0].clone());
        }
        if let Some(n) = o.get("risk_score").and_then(Value::as_u64) {
            o.insert("risk_score".into(), json!(n as f64));
        }
        r
    }

    /// Elastic's published facts (rule names, windows, queries, scores), recorded with their
    /// source commits; the rules are checked against these, never against our own constants.
    fn elastic_facts() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/standin/fixtures/elastic-dga-content.json"
        ))
        .unwrap()
    }

    #[test]
    fn builtin_rules_follow_elastics_content_under_our_own_ids() {
        let facts = elastic_facts();
        // The fixture records the rules as Elastic ships them now (8.19 and 9.1+).
        let mut inp = input();
        inp.kibana = KibanaFeatures::new(StackVersion::new(9, 2, 0));
        let d = desired_rules(&inp);
        let ids: Vec<&str> = d.iter().filter_map(rule_id).collect();
        assert_eq!(
            ids,
            [
                RULE_PREDICTION,
                RULE_PROBABILITY,
                RULE_SUNBURST,
                RULE_ML_HIGH_SUM
            ]
        );
        let elastic_ids: Vec<&str> = facts["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap())
            .collect();
        for r in &d {
            let id = rule_id(r).unwrap();
            assert!(
                !elastic_ids.contains(&id),
                "{id} is one of Elastic's rule_ids"
            );
            let elastic = content::elastic_of_own(id).expect("derived from an Elastic rule");
            let f = facts["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["rule_id"] == elastic)
                .unwrap_or_else(|| panic!("no fact for {elastic}"));
            assert!(has_tag(r, DGA_TAG));
            assert!(has_tag(r, "dga-operator:owner:security/dga"));
            assert_eq!(r["enabled"], true);
            for k in [
                "name",
                "type",
                "from",
                "risk_score",
                "severity",
                "timestamp_override",
            ] {
                if !f[k].is_null() {
                    assert_eq!(r[k], f[k], "{elastic}: {k}");
                }
            }
            // Kibana's default interval is 5m (Elastic's TOML leaves it out).
            let interval = if f["interval"].is_null() {
                json!("5m")
            } else {
                f["interval"].clone()
            };
            assert_eq!(
                r.get("interval").cloned().unwrap_or(json!("5m")),
                interval,
                "{elastic}: interval"
            );
            if let Some(q) = f["query"].as_str() {
                assert_eq!(r["query"], q, "{elastic}: query");
            }
            let t = r["threat"].to_string();
            for tech in f["techniques"].as_array().into_iter().flatten() {
                assert!(
                    t.contains(tech.as_str().unwrap()),
                    "{elastic}: {tech} in {t}"
                );
            }
        }
        // The ML rule's window reaches back over a final 15-minute bucket.
        let ml = d.iter().find(|r| r["type"] == "machine_learning").unwrap();
        assert_eq!(ml["interval"], "15m");
        assert_eq!(ml["from"], "now-45m");
        assert!(ml.get("index").is_none());
        // Before 8.19 Elastic's packages mapped T1568 only (detection-rules 8993d145).
        inp.kibana = KibanaFeatures::new(StackVersion::new(8, 18, 0));
        for r in desired_rules(&inp) {
            let t = r["threat"].to_string();
            assert!(t.contains("T1568.002") && !t.contains("T1071"), "{t}");
        }
    }

    /// Every property a schema declares, following `$ref` and `allOf`.
    fn declared(doc: &Value, schema: &Value, out: &mut BTreeSet<String>) {
        let mut s = schema;
        while let Some(r) = s.get("$ref").and_then(Value::as_str) {
            s = doc.pointer(&r[1..]).unwrap();
        }
        if let Some(p) = s.get("properties").and_then(Value::as_object) {
            out.extend(p.keys().cloned());
        }
        for sub in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            declared(doc, sub, out);
        }
    }

    #[test]
    fn desired_rules_send_only_declared_fields() {
        let doc = &dga_standin::spec::kibana_spec().doc;
        for r in desired_rules(&input()) {
            let ty = match r["type"].as_str().unwrap() {
                "query" => "QueryRule",
                "machine_learning" => "MachineLearningRule",
                t => panic!("{t}"),
            };
            for op in ["CreateProps", "UpdateProps"] {
                let mut keys = BTreeSet::new();
                declared(
                    doc,
                    &json!({"$ref": format!("#/components/schemas/{ty}{op}")}),
                    &mut keys,
                );
                for k in r.as_object().unwrap().keys() {
                    assert!(keys.contains(k), "{ty}{op} does not declare {k}");
                }
            }
        }
    }

    #[test]
    fn desired_rules_validate_against_the_kibana_spec() {
        let spec = dga_standin::spec::kibana_spec();
        let create = json!({"$ref": "#/components/schemas/RuleCreateProps"});
        let update = json!({"$ref": "#/components/schemas/RuleUpdateProps"});
        let mut inp = input();
        for enabled in [true, false] {
            inp.enabled = enabled;
            for r in desired_rules(&inp) {
                dga_standin::spec::validate(&spec.doc, &create, &r)
                    .unwrap_or_else(|e| panic!("{}: {e}", r["rule_id"]));
                let stored = as_stored(&r);
                let body = update_body(&r, &stored);
                dga_standin::spec::validate(&spec.doc, &update, &body)
                    .unwrap_or_else(|e| panic!("{}: {e}", r["rule_id"]));
            }
        }
    }

    #[test]
    fn selection_index_enabled_and_source_rules() {
        let mut inp = input();
        inp.selected = Some(vec![RULE_SUNBURST.into(), "nope".into()]);
        inp.index = vec!["dns-*".into()];
        inp.enabled = false;
        let d = desired_rules(&inp);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0]["index"], json!(["dns-*"]));
        assert_eq!(d[0]["enabled"], false);
        assert_eq!(unknown_selected(&inp), ["nope"]);

        let release = json!({
            "id": "abc", "created_at": "x", "immutable": true, "rule_id": "64116bb2-0f2c-4cf6-9df4-9973452b4d4b",
            "type": "query", "language": "kuery", "name": "n", "description": "d", "risk_score": 21,
            "severity": "low", "query": "ml_is_dga.malicious_prediction:1",
            "tags": ["Elastic", "dga-operator:owner:other/pkg"], "index": ["old-*"],
        });
        let inp = RulesInput {
            source_rules: vec![
                release.clone(),
                release,
                json!({"type": "query", "name": "no id"}),
            ],
            ..input()
        };
        let d = desired_rules(&inp);
        assert_eq!(d.len(), 1);
        assert!(d[0].get("id").is_none() && d[0].get("immutable").is_none());
        assert_eq!(
            d[0]["tags"],
            json!(["Elastic", DGA_TAG, "dga-operator:owner:security/dga"])
        );
        assert_eq!(d[0]["index"], json!(DEFAULT_INDEX));
    }

    #[test]
    fn nothing_to_do_when_kibana_holds_the_rules() {
        let d = desired_rules(&input());
        assert_eq!(diff(&d, &[], &owner_tag(OWNER)).len(), 4);
        assert!(
            diff(&d, &[], &owner_tag(OWNER))
                .iter()
                .all(|a| matches!(a, RuleAction::Create(_)))
        );
        let observed: Vec<Value> = d.iter().map(as_stored).collect();
        assert_eq!(diff(&d, &observed, &owner_tag(OWNER)), vec![]);
    }

    #[test]
    fn drift_is_repaired_and_enabled_kept() {
        let d = desired_rules(&input());
        let mut observed: Vec<Value> = d.iter().map(as_stored).collect();
        observed[1]["query"] = json!("ml_is_dga.malicious_probability > 0.5");
        observed[1]["enabled"] = json!(false);
        observed[1]["exceptions_list"] =
            json!([{"id": "x", "list_id": "l", "namespace_type": "single", "type": "detection"}]);
        observed[3]["enabled"] = json!(false); // only disabled: no update
        let a = diff(&d, &observed, &owner_tag(OWNER));
        assert_eq!(a.len(), 1, "{a:?}");
        let RuleAction::Update {
            rule_id,
            body,
            reason,
        } = &a[0]
        else {
            panic!("{a:?}")
        };
        assert_eq!(rule_id, RULE_PROBABILITY);
        assert!(reason.contains("query"), "{reason}");
        assert_eq!(body["query"], "ml_is_dga.malicious_probability > 0.98");
        assert_eq!(body["enabled"], false);
        assert_eq!(body["exceptions_list"][0]["list_id"], "l");
    }

    #[test]
    fn tags_compare_as_sets_and_extra_tags_differ() {
        let d = desired_rules(&input());
        let mut observed: Vec<Value> = d.iter().map(as_stored).collect();
        observed[0]["tags"]
            .as_array_mut()
            .unwrap()
            .push(json!("mine"));
        let a = diff(&d, &observed, &owner_tag(OWNER));
        assert!(
            matches!(&a[..], [RuleAction::Update { reason, .. }] if reason.contains("tags")),
            "{a:?}"
        );
    }

    #[test]
    fn conflicts_deletes_and_foreign_rules() {
        let d = desired_rules(&input());
        let own = owner_tag(OWNER);
        let mut observed: Vec<Value> = d.iter().map(as_stored).collect();
        // Rule 0 made by hand: same rule_id, no ownership tag.
        observed[0]["tags"] = json!([DGA_TAG]);
        // Rule 1 owned by another package.
        observed[1]["tags"] = json!([DGA_TAG, "dga-operator:owner:other/pkg"]);
        // Rule 2 is an Elastic prebuilt rule.
        observed[2]["tags"] = json!(["Use Case: Domain Generation Algorithm Detection"]);
        observed[2]["immutable"] = json!(true);
        // A stale owned rule, and a foreign ML-DGA rule.
        observed.push(json!({"rule_id": "stale", "id": "s", "tags": [DGA_TAG, own]}));
        observed.push(json!({"rule_id": "foreign", "id": "f", "tags": [DGA_TAG]}));
        let a = diff(&d, &observed, &own);
        assert_eq!(a.len(), 4, "{a:?}");
        assert!(
            matches!(&a[0], RuleAction::Conflict { rule_id, detail } if rule_id == RULE_PREDICTION && detail.contains("ownership tag"))
        );
        assert!(
            matches!(&a[1], RuleAction::Conflict { detail, .. } if detail.contains("other/pkg"))
        );
        assert!(
            matches!(&a[2], RuleAction::Conflict { detail, .. } if detail.contains("prebuilt"))
        );
        assert_eq!(
            a[3],
            RuleAction::Delete {
                rule_id: "stale".into()
            }
        );

        let o = overwrite_conflicts(a, &d, &observed);
        assert!(matches!(&o[0], RuleAction::Update { body, .. } if has_tag(body, &own)));
        assert!(matches!(&o[3], RuleAction::Delete { .. }));
    }

    #[test]
    fn normalisation() {
        assert!(field_matches("risk_score", &json!(21), Some(&json!(21.0))));
        assert!(field_matches(
            "machine_learning_job_id",
            &json!(["j"]),
            Some(&json!("j"))
        ));
        assert!(field_matches(
            "index",
            &json!(["a", "b"]),
            Some(&json!(["b", "a"]))
        ));
        assert!(!field_matches(
            "index",
            &json!(["a", "b"]),
            Some(&json!(["a"]))
        ));
        assert!(field_matches("references", &json!([]), None));
        assert!(field_matches("note", &json!(null), Some(&json!(""))));
        assert!(!field_matches("query", &json!("a"), None));
        assert!(field_matches(
            "threat",
            &json!([{"a": 1}]),
            Some(&json!([{"a": 1, "extra": 2}]))
        ));
        assert!(!field_matches(
            "threat",
            &json!([{"a": 1}]),
            Some(&json!([]))
        ));
    }

    /// A release rule carrying fields newer Kibanas take keeps them only where the version's
    /// rule bodies accept them (an older Kibana refuses the body or drops the field).
    #[test]
    fn fields_follow_the_kibana_version() {
        let release = json!({"rule_id": "r1", "type": "query", "language": "kuery", "name": "n",
            "description": "d", "risk_score": 21, "severity": "low", "query": "x:1",
            "setup": "s", "required_fields": [{"name": "x", "type": "long"}],
            "related_integrations": [], "investigation_fields": {"field_names": ["x"]}});
        let keys = |v: StackVersion| {
            let inp = RulesInput {
                source_rules: vec![release.clone()],
                kibana: KibanaFeatures::new(v),
                ..input()
            };
            let d = desired_rules(&inp);
            let mut k: Vec<String> = [
                "setup",
                "required_fields",
                "related_integrations",
                "investigation_fields",
            ]
            .into_iter()
            .filter(|k| d[0].get(*k).is_some())
            .map(String::from)
            .collect();
            k.sort();
            k
        };
        assert!(keys(StackVersion::new(7, 17, 29)).is_empty());
        assert_eq!(keys(StackVersion::new(8, 13, 4)), ["investigation_fields"]);
        assert_eq!(
            keys(StackVersion::new(8, 14, 0)),
            ["investigation_fields", "setup"]
        );
        assert_eq!(keys(StackVersion::new(8, 15, 0)).len(), 4);
        // The built-in rules: `setup` only from 8.14.
        for (v, has) in [
            (StackVersion::new(8, 13, 0), false),
            (StackVersion::new(8, 14, 0), true),
        ] {
            let inp = RulesInput {
                kibana: KibanaFeatures::new(v),
                ..input()
            };
            assert!(
                desired_rules(&inp)
                    .iter()
                    .all(|r| r.get("setup").is_some() == has)
            );
        }
    }
}
