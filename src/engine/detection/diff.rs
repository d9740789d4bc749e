//! Pure: desired vs observed on the detection side, one ordered plan (custom rules, Elastic's
//! prebuilt rules, the job and its datafeed).

use super::{Action, Conflict, Desired, JobSeen, Observed, Plan, Recorded, Step};
use crate::engine::mljob::{self, JobChoice};
use crate::engine::{Holder, Marker, holder};
use crate::kibana::prebuilt::{self, Route};
use crate::kibana::rules::{self, RuleAction};

/// Pure: what to do so that Kibana and the job match `d`.
pub fn diff(d: &Desired, o: &Observed, recorded: &Recorded, overwrite: bool) -> Plan {
    let job = match &o.job {
        JobSeen::Read { choice, .. } => Some(choice.clone()),
        JobSeen::Proven(id) => Some(JobChoice {
            id: id.clone(),
            fleet: false,
        }),
        _ => None,
    };
    let desired = match &job {
        Some(j) => d.rules_for(&j.id),
        None => d.rules.clone(),
    };
    let mut decision = prebuilt::decide(
        &prebuilt::wanted(&desired),
        &o.offer,
        &o.rules,
        &recorded.prebuilt,
    );
    let custom = prebuilt::custom_only(&desired, &decision);
    let actions = rules::plan(&custom, &o.rules, &d.owner_tag, overwrite);
    // A rule blocking an install that this plan deletes (rules run first): install after it.
    let deleted = |id: &str| {
        actions
            .iter()
            .any(|a| matches!(a, RuleAction::Delete { rule_id } if rule_id == id))
    };
    let (freed, blocked): (Vec<_>, Vec<_>) = std::mem::take(&mut decision.blocked)
        .into_iter()
        .partition(|(id, _)| deleted(id));
    decision.install.extend(freed);
    decision.blocked = blocked;
    let mut plan = Plan {
        space: d.space.clone(),
        rules: desired.len(),
        route: Route {
            offer: o.offer.clone(),
            decision: decision.clone(),
            custom,
        },
        job: job.clone(),
        steps: Vec::new(),
        conflicts: Vec::new(),
        job_conflict: None,
        index: d.input.index.clone(),
    };
    for a in actions {
        match a {
            RuleAction::Conflict { rule_id, detail } => {
                plan.conflicts.push(Conflict { rule_id, detail })
            }
            a => {
                let repair = recorded.rules && matches!(a, RuleAction::Create(_));
                plan.steps.push(Step {
                    action: Action::Rule(a),
                    repair,
                });
            }
        }
    }
    for (id, version) in &decision.install {
        plan.steps.push(Step {
            action: Action::InstallPrebuilt {
                rule_id: id.clone(),
                version: *version,
            },
            repair: recorded.prebuilt.contains(id),
        });
    }
    // Only where new rules start enabled: otherwise the person enables them.
    if d.input.enabled {
        for (id, _) in &decision.enable {
            plan.steps.push(Step {
                action: Action::EnablePrebuilt {
                    rule_id: id.clone(),
                },
                repair: false,
            });
        }
    }
    for id in &decision.remove {
        plan.steps.push(Step {
            action: Action::RemovePrebuilt {
                rule_id: id.clone(),
            },
            repair: false,
        });
    }
    let job_recorded = !recorded.jobs.is_empty();
    let mut push_job = |action: Action| {
        let repair = job_recorded && action.creates();
        plan.steps.push(Step { action, repair });
    };
    match &o.job {
        JobSeen::Read {
            choice,
            job,
            datafeed,
            job_state,
            datafeed_state,
        } if !choice.fleet || marked_ours(job.as_ref(), d) => {
            let id = &choice.id;
            let feed = mljob::datafeed_id(id);
            // Made by Kibana's module setup (the Fleet route): the module says what its
            // datafeed reads, so its body is not compared with the operator's.
            let module_made = job.as_ref().is_some_and(mljob::fleet_made);
            match job {
                None if d.module.is_some() => {
                    let module = d.module.clone().unwrap_or_default();
                    push_job(Action::SetupModule {
                        module,
                        job: id.clone(),
                    });
                    push_job(Action::MarkJob {
                        id: id.clone(),
                        release: d.marker.release.clone(),
                    });
                    // The setup opened the job and started the datafeed (or says why not).
                    return plan;
                }
                None => push_job(Action::CreateJob { id: id.clone() }),
                Some(have) => {
                    let marker = Marker::from_meta(have.get("custom_settings"));
                    match holder(marker.as_ref(), &d.owner) {
                        Holder::Us => {}
                        Holder::Foreign if overwrite => {}
                        Holder::OtherOwner(o) => {
                            plan.job_conflict = Some(format!(
                                "anomaly detection job {id} is managed by DgaModel {o}"
                            ))
                        }
                        Holder::Foreign => {
                            plan.job_conflict = Some(format!(
                                "anomaly detection job {id} exists and was not installed by this DgaModel (set overwrite: true to use it)"
                            ))
                        }
                    }
                    // The marker names the release: after an upgrade (or a takeover) the job
                    // says which release it serves, like every other object.
                    if plan.job_conflict.is_none() && marker.as_ref() != Some(&d.marker) {
                        push_job(Action::MarkJob {
                            id: id.clone(),
                            release: d.marker.release.clone(),
                        });
                    }
                }
            }
            if plan.job_conflict.is_none() {
                let want = mljob::datafeed_body(id, &d.input.index);
                let recreate = match datafeed {
                    None => {
                        push_job(Action::CreateDatafeed { id: feed.clone() });
                        true
                    }
                    Some(have)
                        if !module_made
                            && (have.get("indices") != want.get("indices")
                                || have.get("query") != want.get("query")) =>
                    {
                        push_job(Action::RecreateDatafeed { id: feed.clone() });
                        true
                    }
                    Some(_) => false,
                };
                if job.is_none() || job_state.as_deref() != Some("opened") {
                    push_job(Action::OpenJob { id: id.clone() });
                }
                if recreate || datafeed_state.as_deref() != Some("started") {
                    push_job(Action::StartDatafeed { id: feed });
                }
            }
        }
        JobSeen::Leftovers(ours) => {
            for (id, _) in ours {
                push_job(Action::RemoveJob { id: id.clone() });
            }
        }
        _ => {}
    }
    plan
}

/// A job that carries this owner's marker (one Kibana's module setup made for it included).
fn marked_ours(job: Option<&serde_json::Value>, d: &Desired) -> bool {
    job.is_some_and(|j| {
        holder(
            Marker::from_meta(j.get("custom_settings")).as_ref(),
            &d.owner,
        ) == Holder::Us
    })
}
