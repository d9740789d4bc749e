//! Elastic's prebuilt DGA rules, where Kibana offers them.
//!
//! From 8.9 Elastic ships its four DGA rules as prebuilt rules (package
//! `security_detection_engine`), installable one by one through Kibana's internal prebuilt-rules
//! API (`…/prebuilt_rules/installation/_review` and `_perform`, `elastic-api-version: 1`). Where
//! Kibana offers a rule there, the operator installs Elastic's rule (by rule_id, at the version
//! Kibana offers) and enables it, instead of writing a custom copy; where it does not (before
//! 8.9, a Kibana without the package, an internal route that changed), the operator writes its
//! own custom rule under its own rule_id ([`super::content`]).
//!
//! Ownership: the operator owns only its choice to install. It records the Elastic rule_ids it
//! installed (`status.objects.prebuiltRules`) and removes only those (and only while a person
//! has not customised them) when they are no longer wanted or the DgaModel is deleted with
//! `deletionPolicy: Delete`. A prebuilt rule a person installed is used as it is: never
//! recorded, enabled, changed or deleted.
//!
//! Upgrades: when Kibana's package offers a newer version of a rule the operator installed, the
//! operator leaves it to Kibana's Rule Updates workflow (`…/prebuilt_rules/upgrade/_review`,
//! `_perform` with the installed `revision`): the upgrade is a person's review of Elastic's
//! changes against their own customisations, not a state the operator converges to. An install
//! whose enable step failed is enabled on a later pass ([`Decision::enable`]).
//!
//! [`decide`] is pure; [`probe`], [`apply`] and [`remove`] do the I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::client::KibanaClient;
use super::content;
use super::rules::is_prebuilt;
use super::version::KibanaFeatures;
use crate::error::Error;

/// What Kibana offers of Elastic's DGA rules through the prebuilt-rules API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// The prebuilt-rules API answered.
    pub api: bool,
    /// Elastic's DGA rules Kibana can install now: rule_id → version.
    pub installable: BTreeMap<String, u64>,
    /// Why the API is not used (empty when it answered).
    pub why_not: String,
}

impl Availability {
    /// A Kibana whose prebuilt-rules API is not used, and why.
    pub fn none(why: impl Into<String>) -> Availability {
        Availability {
            api: false,
            installable: BTreeMap::new(),
            why_not: why.into(),
        }
    }
}

/// Asks Kibana which of Elastic's DGA rules it can install in `space`. A Kibana before 8.9 is
/// not asked; an internal route that is not there or refuses version `1` (404/400: it can change
/// between minors) is reported, not an error, and the custom route is taken.
pub async fn probe(
    client: &KibanaClient,
    space: &str,
    k: &KibanaFeatures,
) -> Result<Availability, Error> {
    if !k.prebuilt_rules() {
        return Ok(Availability::none(format!(
            "Kibana {} ships Elastic's DGA rules as prebuilt rules only from 8.9",
            k.version
        )));
    }
    match client.prebuilt_installable(space).await {
        Ok(rules) => Ok(Availability {
            api: true,
            installable: rules
                .iter()
                .filter_map(|r| {
                    let id = r.get("rule_id")?.as_str()?;
                    let v = r.get("version")?.as_u64()?;
                    content::ELASTIC_RULE_IDS
                        .contains(&id)
                        .then(|| (id.to_string(), v))
                })
                .collect(),
            why_not: String::new(),
        }),
        Err(Error::Rejected { status, detail, .. }) if status == 404 || status == 400 => {
            Ok(Availability::none(format!(
                "Kibana {}'s internal prebuilt-rules API is not usable (HTTP {status}: {detail})",
                k.version
            )))
        }
        Err(e) => Err(e),
    }
}

/// The route each wanted Elastic rule takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// To install through `_perform`: (Elastic rule_id, version Kibana offers).
    pub install: Vec<(String, u64)>,
    /// Installed earlier by this DgaModel (recorded) and still there.
    pub ours: Vec<String>,
    /// Installed by a person (or other tooling): used as they are, never taken.
    pub persons: Vec<String>,
    /// Recorded as ours, no longer wanted, still installed: to remove.
    pub remove: Vec<String>,
    /// Wanted Elastic rules Kibana does not offer: written as custom rules.
    pub custom: Vec<String>,
    /// Wanted Elastic rules Kibana offers whose rule_id a rule that is not Elastic's prebuilt
    /// one holds (left by the old CLI, an older operator build or a person): installing now
    /// would make two rules with one rule_id (kibana #180198). (Elastic rule_id, version
    /// offered); installed in the pass that deletes that rule, or once it is gone.
    pub blocked: Vec<(String, u64)>,
    /// Installed by this DgaModel and never enabled by anyone since (an earlier enable step
    /// failed): (Elastic rule_id, Kibana object id), enabled by [`apply`] when new rules start
    /// enabled.
    pub enable: Vec<(String, String)>,
}

impl Decision {
    /// Elastic rule_ids served by Elastic's prebuilt rules.
    pub fn prebuilt(&self) -> BTreeSet<&str> {
        self.install
            .iter()
            .map(|(id, _)| id.as_str())
            .chain(self.ours.iter().map(String::as_str))
            .chain(self.persons.iter().map(String::as_str))
            .collect()
    }

    /// Elastic rule_ids served without a custom rule of ours: by Elastic's prebuilt rules, or
    /// for now by the rule that holds the rule_id ([`Decision::blocked`]).
    pub fn served(&self) -> BTreeSet<&str> {
        let mut s = self.prebuilt();
        s.extend(self.blocked.iter().map(|(id, _)| id.as_str()));
        s
    }

    /// What this DgaModel holds once the installs are done (its record).
    pub fn record_after(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .ours
            .iter()
            .cloned()
            .chain(self.install.iter().map(|(id, _)| id.clone()))
            .collect();
        r.sort();
        r.dedup();
        r
    }
}

fn rule_id(r: &Value) -> Option<&str> {
    r.get("rule_id").and_then(Value::as_str)
}

/// Whether a person customised an installed prebuilt rule (`rule_source.is_customized`, 8.16+).
pub fn is_customised(r: &Value) -> bool {
    r.pointer("/rule_source/is_customized")
        .and_then(Value::as_bool)
        == Some(true)
}

/// A rule Kibana created disabled and nobody enabled or changed since: Kibana installs a
/// prebuilt rule with `updated_at` equal to `created_at`, and enabling or disabling it (bulk
/// `enable`/`disable`, rules client `enable`) moves `updated_at`. A person who disabled it
/// again after an enable moved it too: their choice is kept.
fn never_enabled(r: &Value) -> bool {
    r.get("enabled").and_then(Value::as_bool) == Some(false)
        && r.get("created_at").is_some()
        && r.get("created_at") == r.get("updated_at")
}

/// Decides the route of each `wanted` Elastic rule_id given what Kibana offers, the rules
/// `observed` in the space and the Elastic rule_ids this DgaModel `recorded` as installed.
pub fn decide(
    wanted: &[&str],
    avail: &Availability,
    observed: &[Value],
    recorded: &[String],
) -> Decision {
    let installed = |id: &str| {
        observed
            .iter()
            .any(|r| rule_id(r) == Some(id) && is_prebuilt(r))
    };
    let mut d = Decision::default();
    for &e in wanted {
        if installed(e) {
            if recorded.iter().any(|r| r == e) {
                d.ours.push(e.to_string());
                if let Some(id) = observed
                    .iter()
                    .find(|r| rule_id(r) == Some(e) && is_prebuilt(r))
                    .filter(|r| never_enabled(r))
                    .and_then(|r| r.get("id").and_then(Value::as_str))
                {
                    d.enable.push((e.to_string(), id.to_string()));
                }
            } else {
                d.persons.push(e.to_string());
            }
        } else if let Some(v) = avail.installable.get(e) {
            if observed.iter().any(|r| rule_id(r) == Some(e)) {
                d.blocked.push((e.to_string(), *v));
            } else {
                d.install.push((e.to_string(), *v));
            }
        } else {
            d.custom.push(e.to_string());
        }
    }
    for r in recorded {
        if !wanted.contains(&r.as_str()) && installed(r) {
            d.remove.push(r.clone());
        }
    }
    d
}

/// The Elastic rule_ids a desired custom rule set stands for (rules derived from Elastic's).
pub fn wanted(desired: &[Value]) -> Vec<&'static str> {
    desired
        .iter()
        .filter_map(rule_id)
        .filter_map(content::elastic_of_own)
        .collect()
}

/// The desired custom rules minus those Elastic's prebuilt rules serve.
pub fn custom_only(desired: &[Value], d: &Decision) -> Vec<Value> {
    let prebuilt = d.served();
    desired
        .iter()
        .filter(|r| {
            !rule_id(r)
                .and_then(content::elastic_of_own)
                .is_some_and(|e| prebuilt.contains(e))
        })
        .cloned()
        .collect()
}

/// The route taken in one space: what Kibana offers, the decision per Elastic rule, and the
/// custom rules still to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub offer: Availability,
    pub decision: Decision,
    /// The desired custom rules minus those Elastic's prebuilt rules serve (for
    /// [`super::rules::plan`]).
    pub custom: Vec<Value>,
}

/// One line per install or removal, for plans, progress and events.
pub fn describe(d: &Decision) -> Vec<String> {
    d.install
        .iter()
        .map(|(id, v)| format!("install Elastic's prebuilt rule {id} (version {v})"))
        .chain(d.remove.iter().map(|id| {
            format!(
                "remove Elastic's prebuilt rule {id} (installed by this owner, no longer wanted)"
            )
        }))
        .chain(d.enable.iter().map(|(id, _)| {
            format!("enable Elastic's prebuilt rule {id} (installed by this owner, never enabled)")
        }))
        .collect()
}

/// What [`apply`] did: the Elastic rule_ids installed (to record even when some failed) and
/// Kibana's error messages for the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub ids: Vec<String>,
    pub errors: Vec<String>,
    /// Rules installed by an earlier pass and enabled by this one ([`Decision::enable`]).
    pub enabled: Vec<String>,
}

/// Installs `d.install` and, when `enable`, enables what was installed (bulk `enable`: an
/// enabled prebuilt rule is not a customised one).
pub async fn apply(
    client: &KibanaClient,
    space: &str,
    d: &Decision,
    enable: bool,
) -> Result<Installed, Error> {
    // An earlier pass installed these but could not enable them: enable them now.
    let pending: Vec<String> = d.enable.iter().map(|(_, id)| id.clone()).collect();
    let mut errors = Vec::new();
    let mut enabled = Vec::new();
    if enable {
        match client.enable_rules(space, &pending).await {
            Ok(()) => enabled.extend(d.enable.iter().map(|(id, _)| id.clone())),
            Err(e) => errors.push(format!("could not enable {}: {e}", names(&d.enable))),
        }
    }
    if d.install.is_empty() {
        return Ok(Installed {
            ids: Vec::new(),
            errors,
            enabled,
        });
    }
    let v = client.prebuilt_install(space, &d.install).await?;
    errors.extend(
        v.get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("message").and_then(Value::as_str).map(String::from)),
    );
    let wanted: BTreeSet<&str> = d.install.iter().map(|(id, _)| id.as_str()).collect();
    // Only what Kibana created: a rule skipped as already installed was installed meanwhile
    // by someone else, and is not ours.
    let created: Vec<&Value> = v
        .pointer("/results/created")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| rule_id(c).is_some_and(|id| wanted.contains(id)))
        .collect();
    let mut ids: Vec<String> = created
        .iter()
        .filter_map(|c| rule_id(c).map(String::from))
        .collect();
    ids.sort();
    if enable && let Err(e) = enable_created(client, space, &created).await {
        // Installed all the same: recorded as ours by the caller; the person enables them.
        errors.push(format!(
            "installed {} but could not enable them: {e}",
            ids.join(", ")
        ));
    }
    Ok(Installed {
        ids,
        errors,
        enabled,
    })
}

fn names(ids: &[(String, String)]) -> String {
    ids.iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Enables the rules `_perform` created, by object id (looked up by rule_id where Kibana's
/// answer gives rule_id and version only: kibana PR #264443).
async fn enable_created(
    client: &KibanaClient,
    space: &str,
    created: &[&Value],
) -> Result<(), Error> {
    let mut objects = Vec::new();
    for c in created {
        match c.get("id").and_then(Value::as_str) {
            Some(id) => objects.push(id.to_string()),
            None => {
                if let Some(r) = client.get_rule(space, rule_id(c).unwrap_or("")).await?
                    && let Some(id) = r.get("id").and_then(Value::as_str)
                {
                    objects.push(id.to_string());
                }
            }
        }
    }
    client.enable_rules(space, &objects).await
}

/// Removes the prebuilt rules in `ids` (Elastic rule_ids this DgaModel installed) that are still
/// installed and not customised by a person. Returns (removed, left because customised).
pub async fn remove(
    client: &KibanaClient,
    space: &str,
    ids: &[String],
) -> Result<(Vec<String>, Vec<String>), Error> {
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for id in ids {
        let Some(r) = client.get_rule(space, id).await? else {
            continue;
        };
        if !is_prebuilt(&r) {
            continue; // not Elastic's rule any more: not ours to remove
        }
        if is_customised(&r) {
            kept.push(id.clone());
            continue;
        }
        client.delete_rule(space, id).await?;
        removed.push(id.clone());
    }
    Ok((removed, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/standin/fixtures/elastic-dga-content.json"
        ))
        .unwrap()
    }

    fn elastic_ids() -> Vec<String> {
        facts()["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn each_wanted_rule_takes_the_route_kibana_offers() {
        let ids = elastic_ids();
        let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut avail = Availability::none("");
        avail.api = true;
        // Kibana offers three; the fourth is installed by a person; another by us earlier.
        avail.installable.insert(ids[0].clone(), 9);
        avail.installable.insert(ids[1].clone(), 9);
        let observed = vec![
            json!({"rule_id": ids[2], "immutable": true, "enabled": true}),
            json!({"rule_id": ids[3], "immutable": true, "rule_source": {"type": "external"}}),
            // A custom rule under an Elastic id does not count as installed, and holds the
            // install back (two rules, one rule_id otherwise: kibana #180198).
            json!({"rule_id": ids[1], "immutable": false}),
        ];
        let d = decide(&wanted[..], &avail, &observed, &[ids[3].clone()]);
        assert_eq!(d.install, vec![(ids[0].clone(), 9)]);
        assert_eq!(d.blocked, vec![(ids[1].clone(), 9)]);
        assert!(d.served().contains(ids[1].as_str()) && !d.prebuilt().contains(ids[1].as_str()));
        assert_eq!(d.persons, vec![ids[2].clone()]);
        assert_eq!(d.ours, vec![ids[3].clone()]);
        assert!(d.custom.is_empty() && d.remove.is_empty());
        let mut rec = vec![ids[0].clone(), ids[3].clone()];
        rec.sort();
        assert_eq!(d.record_after(), rec);

        // Without the package nothing is offered: all custom; a recorded rule no longer wanted
        // and still installed is removed.
        let d = decide(
            &wanted[..1],
            &Availability::none("air-gapped"),
            &observed,
            &[ids[3].clone()],
        );
        assert_eq!(d.custom, vec![ids[0].clone()]);
        assert_eq!(d.remove, vec![ids[3].clone()]);
    }

    /// An install of ours whose enable step failed is enabled on a later pass; one a person
    /// disabled after it was enabled (its `updated_at` moved) is left disabled.
    #[test]
    fn an_install_never_enabled_is_enabled_later() {
        let ids = elastic_ids();
        let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
        let t0 = "2026-12-06T04:00:00.000Z";
        let observed = vec![
            json!({"id": "o0", "rule_id": ids[0], "immutable": true, "enabled": false,
                "created_at": t0, "updated_at": t0}),
            json!({"id": "o1", "rule_id": ids[1], "immutable": true, "enabled": false,
                "created_at": t0, "updated_at": "2026-12-06T05:00:00.000Z"}),
            json!({"id": "o2", "rule_id": ids[2], "immutable": true, "enabled": true,
                "created_at": t0, "updated_at": t0}),
            // A person's install, never enabled: not ours to enable.
            json!({"id": "o3", "rule_id": ids[3], "immutable": true, "enabled": false,
                "created_at": t0, "updated_at": t0}),
        ];
        let recorded: Vec<String> = ids[..3].to_vec();
        let d = decide(&wanted, &Availability::none(""), &observed, &recorded);
        assert_eq!(d.enable, vec![(ids[0].clone(), "o0".to_string())]);
        assert_eq!(d.persons, vec![ids[3].clone()]);
        assert!(describe(&d)[0].starts_with(&format!("enable Elastic's prebuilt rule {}", ids[0])));
    }

    #[test]
    fn custom_rules_are_kept_only_where_no_prebuilt_rule_serves() {
        use crate::kibana::rules::{RulesInput, desired_rules};
        let desired = desired_rules(&RulesInput {
            owner: "ns/n".into(),
            ..Default::default()
        });
        let w = wanted(&desired);
        assert_eq!(w.len(), 4);
        let ids = elastic_ids();
        let d = Decision {
            install: vec![(ids[0].clone(), 9)],
            persons: vec![ids[1].clone()],
            custom: vec![ids[2].clone(), ids[3].clone()],
            ..Default::default()
        };
        let left = custom_only(&desired, &d);
        assert_eq!(left.len(), 2);
        for r in &left {
            let e = content::elastic_of_own(r["rule_id"].as_str().unwrap()).unwrap();
            assert!(e == ids[2] || e == ids[3]);
        }
    }
}
