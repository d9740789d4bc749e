//! The detection side's pure parts: build and diff of rules, prebuilt choices, job and datafeed.

use serde_json::json;

use super::*;
use crate::engine::mljob;
use crate::kibana::StackVersion;
use crate::kibana::prebuilt::Availability;

fn owner() -> Owner {
    Owner {
        namespace: "security".into(),
        name: "dga".into(),
        uid: "u1".into(),
        adopted: vec![],
    }
}

fn marker() -> Marker {
    Marker::for_owner(&owner(), "ML-DGA-20210126-1", "abc")
}

fn kibana(major: u32, minor: u32) -> KibanaFeatures {
    KibanaFeatures::new(StackVersion::new(major, minor, 0))
}

fn desired(k: KibanaFeatures) -> Desired {
    build(&[], &owner(), &marker(), &Settings::default(), k).unwrap()
}

fn nothing_there(d: &Desired) -> Observed {
    Observed {
        rules: vec![],
        offer: Availability::none("air-gapped"),
        job: JobSeen::Read {
            choice: JobChoice {
                id: d.input.job_id.clone(),
                fleet: false,
            },
            job: None,
            datafeed: None,
            job_state: None,
            datafeed_state: None,
        },
    }
}

fn lines(p: &Plan) -> Vec<String> {
    p.lines()
}

#[test]
fn build_follows_the_spec_and_the_kibana_version() {
    let d = desired(kibana(8, 17));
    assert_eq!(d.rules.len(), 4);
    assert!(d.needs_job);
    assert_eq!(d.input.job_id, mljob::JOB_ID);
    assert_eq!(desired(kibana(9, 4)).input.job_id, mljob::JOB_ID_EA);

    let off = Settings {
        wanted: false,
        ..Settings::default()
    };
    let d = build(&[], &owner(), &marker(), &off, kibana(8, 17)).unwrap();
    assert!(d.rules.is_empty() && !d.needs_job);

    let bad = Settings {
        selected: Some(vec!["no-such-rule".into()]),
        ..Settings::default()
    };
    let e = build(&[], &owner(), &marker(), &bad, kibana(8, 17)).unwrap_err();
    assert!(matches!(e, Error::InvalidSpec(m) if m.contains("no-such-rule")));
}

#[test]
fn a_fresh_stack_plans_rules_then_job_and_datafeed() {
    let d = desired(kibana(8, 17));
    let p = diff(&d, &nothing_there(&d), &Recorded::default(), false);
    assert!(p.conflicts.is_empty() && p.job_conflict.is_none());
    let services: Vec<Service> = p.steps.iter().map(|s| s.action.service()).collect();
    assert_eq!(
        services,
        [vec![Service::Kibana; 4], vec![Service::Elasticsearch; 4]].concat()
    );
    let feed = mljob::datafeed_id(mljob::JOB_ID);
    assert_eq!(
        lines(&p)[4..],
        [
            format!("create anomaly detection job {}", mljob::JOB_ID),
            format!("create datafeed {feed}"),
            format!("open job {}", mljob::JOB_ID),
            format!("start datafeed {feed}"),
        ]
    );
    assert!(lines(&p)[..4].iter().all(|l| l.starts_with("create rule ")));
    assert_eq!(p.repairs(), 0);

    // The same objects gone after the status recorded them: repairs.
    let recorded = Recorded {
        rules: true,
        prebuilt: vec![],
        jobs: vec![mljob::JOB_ID.into()],
    };
    let p = diff(&d, &nothing_there(&d), &recorded, false);
    assert_eq!(
        p.repairs(),
        6,
        "4 rules, the job and the datafeed: {:?}",
        p.lines()
    );
    assert!(p.lines()[0].starts_with("repair: create rule "));
}

#[test]
fn elastic_prebuilt_rules_replace_the_custom_ones_where_kibana_offers_them() {
    let d = desired(kibana(8, 17));
    let mut o = nothing_there(&d);
    o.offer = Availability {
        api: true,
        installable: crate::kibana::content::ELASTIC_RULE_IDS
            .iter()
            .map(|id| (id.to_string(), 7))
            .collect(),
        why_not: String::new(),
    };
    let p = diff(&d, &o, &Recorded::default(), false);
    let installs: Vec<&Step> = p
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::InstallPrebuilt { version: 7, .. }))
        .collect();
    assert_eq!(installs.len(), 4);
    assert!(
        installs
            .iter()
            .all(|s| s.action.service() == Service::Kibana)
    );
    assert!(!p.steps.iter().any(|s| matches!(s.action, Action::Rule(_))));
    assert!(p.route.custom.is_empty());
    // The job is still the operator's to run.
    assert!(
        p.steps
            .iter()
            .any(|s| matches!(s.action, Action::CreateJob { .. }))
    );
}

/// The pass that installed Elastic's rules failed to enable them: the next plan holds a Kibana
/// step to enable them (a plan without one would skip Kibana altogether), unless new rules are
/// to start disabled or someone enabled or changed them since.
#[test]
fn prebuilt_rules_installed_but_never_enabled_are_enabled_by_the_next_plan() {
    let d = desired(kibana(8, 17));
    let ids = crate::kibana::content::ELASTIC_RULE_IDS;
    let mut o = nothing_there(&d);
    let installed = |enabled: bool, updated: &str| -> Vec<serde_json::Value> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"id": format!("obj-{i}"), "rule_id": id, "immutable": true,
                       "rule_source": {"type": "external", "is_customized": false},
                       "enabled": enabled, "created_at": "2026-01-01T00:00:00.000Z",
                       "updated_at": updated})
            })
            .collect()
    };
    o.rules = installed(false, "2026-01-01T00:00:00.000Z");
    let recorded = Recorded {
        rules: true,
        prebuilt: ids.iter().map(|s| s.to_string()).collect(),
        jobs: vec![],
    };
    let enables = |p: &Plan| {
        p.steps
            .iter()
            .filter(|s| matches!(s.action, Action::EnablePrebuilt { .. }))
            .count()
    };
    let p = diff(&d, &o, &recorded, false);
    assert_eq!(enables(&p), ids.len(), "{:?}", p.lines());
    assert!(
        p.steps
            .iter()
            .filter(|s| matches!(s.action, Action::EnablePrebuilt { .. }))
            .all(|s| s.action.service() == Service::Kibana && !s.repair)
    );
    assert!(
        p.lines()
            .iter()
            .any(|l| l.starts_with("enable Elastic's prebuilt rule"))
    );

    // Not ours (not recorded): a person's, left as it is.
    assert_eq!(enables(&diff(&d, &o, &Recorded::default(), false)), 0);
    // Disabled again by someone after an enable (updated_at moved): their choice.
    o.rules = installed(false, "2026-01-02T00:00:00.000Z");
    assert_eq!(enables(&diff(&d, &o, &recorded, false)), 0);
    // New rules start disabled (spec.rules.enableNewRules: false): nothing to enable.
    o.rules = installed(false, "2026-01-01T00:00:00.000Z");
    let off = Settings {
        enable_new: false,
        ..Settings::default()
    };
    let d_off = build(&[], &owner(), &marker(), &off, kibana(8, 17)).unwrap();
    assert_eq!(enables(&diff(&d_off, &o, &recorded, false)), 0);
}

/// A rule that is not Elastic's prebuilt one holding an Elastic rule_id Kibana offers: never
/// installed beside it (two rules, one rule_id: kibana #180198). Another DgaModel's holds the
/// install back and says so; this owner's own leftover is deleted and replaced in one plan.
#[test]
fn an_elastic_rule_id_held_by_another_rule_is_not_installed_beside_it() {
    use crate::kibana::rules::OWNER_TAG_PREFIX;
    let d = desired(kibana(8, 17));
    let ids = crate::kibana::content::ELASTIC_RULE_IDS;
    let mut o = nothing_there(&d);
    o.offer = Availability {
        api: true,
        installable: ids.iter().map(|id| (id.to_string(), 7)).collect(),
        why_not: String::new(),
    };
    let held = ids[0];
    let leftover = |owner: &str| {
        json!({"id": "left", "rule_id": held, "name": "old", "immutable": false,
               "rule_source": {"type": "internal"}, "enabled": true,
               "tags": ["ML-DGA", format!("{OWNER_TAG_PREFIX}{owner}")]})
    };
    let installs = |p: &Plan| -> Vec<String> {
        p.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::InstallPrebuilt { rule_id, .. } => Some(rule_id.clone()),
                _ => None,
            })
            .collect()
    };
    // Another DgaModel's rule (an older operator build): held back, no custom copy either.
    o.rules = vec![leftover("elsewhere/other")];
    let p = diff(&d, &o, &Recorded::default(), false);
    assert!(!installs(&p).contains(&held.to_string()), "{:?}", p.lines());
    assert_eq!(installs(&p).len(), ids.len() - 1);
    assert_eq!(p.route.decision.blocked, vec![(held.to_string(), 7)]);
    assert!(p.route.custom.is_empty(), "{:?}", p.route.custom);
    assert!(p.conflicts.is_empty());
    let msg = p.route_message("8.17.0");
    assert!(
        msg.contains(held) && msg.contains("two rules with one rule_id"),
        "{msg}"
    );
    assert!(
        p.route_line().contains("1 of Elastic's held back"),
        "{}",
        p.route_line()
    );

    // This owner's own leftover: deleted first, then Elastic's rule installed, in one plan.
    o.rules = vec![leftover(&d.owner.key())];
    let p = diff(&d, &o, &Recorded::default(), false);
    let lines = p.lines();
    let delete = lines
        .iter()
        .position(|l| l.contains("delete") && l.contains(held));
    let install = lines
        .iter()
        .position(|l| l.starts_with(&format!("install Elastic's prebuilt rule {held}")));
    assert!(
        matches!((delete, install), (Some(a), Some(b)) if a < b),
        "{lines:?}"
    );
    assert!(p.route.decision.blocked.is_empty());
}

#[test]
fn a_settled_install_plans_nothing() {
    let d = desired(kibana(8, 17));
    let id = d.input.job_id.clone();
    let feed = mljob::datafeed_id(&id);
    let o = Observed {
        rules: d.rules.clone(),
        offer: Availability::none("air-gapped"),
        job: JobSeen::Read {
            choice: JobChoice {
                id: id.clone(),
                fleet: false,
            },
            job: Some(mljob::job_body(&id, &d.marker)),
            datafeed: Some(mljob::datafeed_body(&id, &d.input.index)),
            job_state: Some("opened".into()),
            datafeed_state: Some("started".into()),
        },
    };
    let p = diff(&d, &o, &Recorded::default(), false);
    assert!(p.is_empty(), "{:?}", p.lines());

    // A stopped datafeed is started; a datafeed reading other indices is recreated first.
    let mut o2 = o.clone();
    if let JobSeen::Read {
        datafeed,
        datafeed_state,
        ..
    } = &mut o2.job
    {
        *datafeed_state = Some("stopped".into());
        *datafeed = Some(mljob::datafeed_body(&id, &["other-*".into()]));
    }
    assert_eq!(
        diff(&d, &o2, &Recorded::default(), false).lines(),
        vec![
            format!("recreate datafeed {feed} (indices or query changed)"),
            format!("start datafeed {feed}"),
        ]
    );

    // A glance proved the job running: nothing read, nothing planned for it.
    let o3 = Observed {
        job: JobSeen::Proven(id.clone()),
        ..o
    };
    let p = diff(&d, &o3, &Recorded::default(), false);
    assert!(p.is_empty() && p.job.as_ref().is_some_and(|j| j.id == id));
}

#[test]
fn fleets_job_is_watched_not_touched_and_a_foreign_job_is_a_conflict() {
    let d = desired(kibana(8, 17));
    let mut o = nothing_there(&d);
    o.job = JobSeen::Read {
        choice: JobChoice {
            id: mljob::JOB_ID_EA.into(),
            fleet: true,
        },
        job: Some(json!({"custom_settings": {"created_by": mljob::FLEET_CREATED_BY}})),
        datafeed: None,
        job_state: None,
        datafeed_state: None,
    };
    let p = diff(&d, &o, &Recorded::default(), false);
    assert!(
        p.steps
            .iter()
            .all(|s| s.action.service() == Service::Kibana)
    );
    let ml = p
        .steps
        .iter()
        .find_map(|s| match &s.action {
            Action::Rule(RuleAction::Create(b)) if b["type"] == "machine_learning" => {
                Some(b.clone())
            }
            _ => None,
        })
        .expect("the ML rule is created");
    assert!(
        ml["machine_learning_job_id"]
            .to_string()
            .contains(mljob::JOB_ID_EA)
    );

    let mut o = nothing_there(&d);
    if let JobSeen::Read { job, .. } = &mut o.job {
        *job = Some(json!({"custom_settings": {}}));
    }
    let p = diff(&d, &o, &Recorded::default(), false);
    assert!(
        p.job_conflict
            .as_ref()
            .is_some_and(|c| c.contains("overwrite"))
    );
    assert!(
        !p.steps
            .iter()
            .any(|s| s.action.service() == Service::Elasticsearch)
    );
    let p = diff(&d, &o, &Recorded::default(), true);
    assert!(p.job_conflict.is_none());
    assert!(
        matches!(p.steps[4].action, Action::MarkJob { .. }),
        "{:?}",
        p.lines()
    );
}

#[test]
fn a_job_no_longer_wanted_is_removed() {
    let off = Settings {
        wanted: false,
        ..Settings::default()
    };
    let d = build(&[], &owner(), &marker(), &off, kibana(8, 17)).unwrap();
    let o = Observed {
        rules: vec![],
        offer: Availability::none("no rule of Elastic's is wanted"),
        job: JobSeen::Leftovers(vec![(mljob::JOB_ID.into(), json!({}))]),
    };
    let p = diff(&d, &o, &Recorded::default(), false);
    assert_eq!(
        p.lines(),
        vec![format!(
            "remove datafeed {}; remove anomaly detection job {}",
            mljob::datafeed_id(mljob::JOB_ID),
            mljob::JOB_ID
        )]
    );
    assert!(p.job.is_none());
}

#[test]
fn removal_is_a_plan_against_nothing() {
    let d = desired(kibana(8, 17));
    let ours = d.rules[0].clone();
    let elastic = crate::kibana::content::ELASTIC_RULE_IDS[0];
    let other = crate::kibana::content::ELASTIC_RULE_IDS[1];
    let o = Observed {
        rules: vec![
            ours.clone(),
            // Installed by this owner (recorded), and by a person (not recorded).
            json!({"rule_id": elastic, "immutable": true}),
            json!({"rule_id": other, "immutable": true}),
        ],
        offer: Availability::none("no rule of Elastic's is wanted"),
        job: JobSeen::Leftovers(vec![(mljob::JOB_ID.into(), json!({}))]),
    };
    let nothing = Desired::nothing(&owner(), "default");
    let recorded = Recorded {
        rules: true,
        prebuilt: vec![elastic.to_string()],
        jobs: vec![],
    };
    let p = diff(&nothing, &o, &recorded, false);
    let gone: Vec<String> = p.steps.iter().filter_map(|s| s.action.gone()).collect();
    assert_eq!(
        gone,
        vec![
            format!("detection rule {}", ours["rule_id"].as_str().unwrap()),
            format!("Elastic's prebuilt rule {elastic}"),
            format!(
                "datafeed {}, anomaly detection job {}",
                mljob::datafeed_id(mljob::JOB_ID),
                mljob::JOB_ID
            ),
        ]
    );
    assert_eq!(gone.len(), p.steps.len(), "removal only: {:?}", p.lines());
}

#[test]
fn one_plan_lists_both_services_in_apply_order() {
    let d = desired(kibana(8, 17));
    let det = diff(&d, &nothing_there(&d), &Recorded::default(), false);
    let whole = super::super::plan::Plan {
        package: None,
        es: super::super::diff::Plan {
            actions: vec![super::super::Action::PutModel {
                id: "m".into(),
                reason: super::super::Reason::Create,
            }],
            conflicts: vec![],
        },
        detection: Some(det),
    };
    let l = whole.lines();
    assert_eq!(l.len(), 9);
    assert_eq!(l[0].service, Service::Elasticsearch);
    assert_eq!(l[0].text, "create trained model m");
    assert_eq!(l[1].service, Service::Kibana);
    assert_eq!(
        l[8].text,
        format!("start datafeed {}", mljob::datafeed_id(mljob::JOB_ID))
    );
    assert_eq!(whole.pending().len(), 9);
    assert!(!whole.is_empty());
}

#[test]
fn an_installed_prebuilt_ml_rule_names_the_job_to_keep() {
    use super::observe::watched_by_prebuilt;
    let ml = |job: serde_json::Value, immutable: bool| {
        json!({"rule_id": "ff0d807d", "type": "machine_learning", "immutable": immutable,
            "machine_learning_job_id": job})
    };
    // Installed before a stack upgrade across 9.4: still Elastic's old job.
    assert_eq!(
        watched_by_prebuilt(&[ml(json!(["dga_high_sum_probability"]), true)]),
        Some(mljob::JOB_ID)
    );
    assert_eq!(
        watched_by_prebuilt(&[ml(json!("dga_high_sum_probability_ea"), true)]),
        Some(mljob::JOB_ID_EA)
    );
    // A custom rule (ours or a person's), or a job that is not Elastic's: no say.
    assert_eq!(
        watched_by_prebuilt(&[ml(json!(["dga_high_sum_probability"]), false)]),
        None
    );
    assert_eq!(watched_by_prebuilt(&[ml(json!(["other"]), true)]), None);
    let query = json!({"rule_id": "x", "type": "query", "immutable": true});
    assert_eq!(watched_by_prebuilt(&[query]), None);
}
