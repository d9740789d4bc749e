//! The detection side of an install, as engine objects: the Kibana detection rules (custom
//! rules, and the choice to install Elastic's prebuilt ones), and the anomaly detection job and
//! datafeed the machine-learning rule watches. Same verbs as the Elasticsearch objects:
//! [`build`] (pure) → [`observe`] → [`diff`] (pure) → [`apply`], so a pass, `mode: Plan`,
//! `dga-operator plan` and a removal all read one list of [`Action`]s.
//!
//! The job lives in Elasticsearch but belongs here: which job (and whether one at all) follows
//! from the rules and Kibana's version, so it is planned with them.

use std::fmt;

use serde_json::{Value, json};

use super::mljob::{self, JobChoice};
use super::{Holder, MARKER_KEY, Marker, Owner, holder};
use crate::elasticsearch::Elasticsearch;
use crate::error::{Error, Service};
use crate::kibana::prebuilt::{self, Availability, Route};
use crate::kibana::rules::{self, RuleAction, RulesInput};
use crate::kibana::{KibanaClient, KibanaFeatures, owner_tag};

/// What the spec says about the rules (the CLI's fixed choices are the defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub space: String,
    /// `spec.rules.enabled`: rules installed at all.
    pub wanted: bool,
    /// `rule_id`s to install; `None` = all.
    pub selected: Option<Vec<String>>,
    /// Index patterns of the query rules and the datafeed.
    pub index: Vec<String>,
    /// Whether rules the operator creates start enabled.
    pub enable_new: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            space: "default".into(),
            wanted: true,
            selected: None,
            index: rules::default_index(),
            enable_new: true,
        }
    }
}

/// What the owner wants in Kibana (and of the job), for one Kibana version.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub space: String,
    pub wanted: bool,
    pub owner: Owner,
    pub marker: Marker,
    pub owner_tag: String,
    /// What the rules are built from; rebuilt with the job [`diff`] finds (Fleet's may differ).
    pub input: RulesInput,
    /// The desired custom rules before the route (Elastic's prebuilt rules) is decided.
    pub rules: Vec<Value>,
    /// The machine-learning rule is wanted: its job and datafeed are.
    pub needs_job: bool,
}

/// Pure: the rules and job an owner wants, from the release's rules, the spec and Kibana's
/// version. An unknown selected rule_id is `InvalidSpec`.
pub fn build(
    source_rules: &[Value],
    owner: &Owner,
    marker: &Marker,
    settings: &Settings,
    kibana: KibanaFeatures,
) -> Result<Desired, Error> {
    let input = RulesInput {
        source_rules: source_rules.to_vec(),
        selected: settings.selected.clone(),
        index: settings.index.clone(),
        enabled: settings.enable_new,
        owner: owner.key(),
        kibana,
        job_id: mljob::job_id_for(&kibana).to_string(),
    };
    let unknown = rules::unknown_selected(&input);
    if !unknown.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "spec.rules.ruleIds: unknown rule_id {}",
            unknown.join(", ")
        )));
    }
    let rules = if settings.wanted {
        rules::desired_rules(&input)
    } else {
        Vec::new()
    };
    let needs_job = rules
        .iter()
        .any(|r| r.get("type").and_then(Value::as_str) == Some("machine_learning"));
    Ok(Desired {
        space: settings.space.clone(),
        wanted: settings.wanted,
        owner: owner.clone(),
        marker: marker.clone(),
        owner_tag: owner_tag(&owner.key()),
        input,
        rules,
        needs_job,
    })
}

impl Desired {
    /// Nothing wanted: what a removal plans against (every object the owner holds goes).
    pub fn nothing(owner: &Owner, space: &str) -> Desired {
        Desired {
            space: space.to_string(),
            wanted: false,
            owner: owner.clone(),
            marker: Marker::for_owner(owner, "", ""),
            owner_tag: owner_tag(&owner.key()),
            input: RulesInput {
                owner: owner.key(),
                ..RulesInput::default()
            },
            rules: Vec::new(),
            needs_job: false,
        }
    }

    /// The rules again, pointing the machine-learning rule at `job`.
    fn rules_for(&self, job: &str) -> Vec<Value> {
        if job == self.input.job_id || !self.wanted {
            return self.rules.clone();
        }
        rules::desired_rules(&RulesInput {
            job_id: job.to_string(),
            ..self.input.clone()
        })
    }
}

/// What an owner recorded as installed (its status; nothing for the CLI).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Rules were installed in this space before: a rule created again is a repair.
    pub rules: bool,
    /// Elastic rule_ids this owner installed as prebuilt rules in this space.
    pub prebuilt: Vec<String>,
    /// Job ids this owner installed.
    pub jobs: Vec<String>,
}

/// How much of the job to read.
#[derive(Debug, Clone, PartialEq)]
pub enum JobLook {
    /// Read it (and Fleet's, to choose), and its datafeed and their states.
    Read,
    /// A glance proved this job open and its datafeed started: nothing to read or do.
    Proven(String),
}

/// What the job side looked like.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSeen {
    /// Not needed, and no job recorded: nothing read.
    NotRead,
    Proven(String),
    Read {
        choice: JobChoice,
        job: Option<Value>,
        datafeed: Option<Value>,
        job_state: Option<String>,
        datafeed_state: Option<String>,
    },
    /// Not needed any more: our jobs (either id) to remove, with their bodies.
    Leftovers(Vec<(String, Value)>),
}

/// One read of Kibana's rules and what it offers, and of the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub rules: Vec<Value>,
    pub offer: Availability,
    pub job: JobSeen,
}

/// Reads what [`diff`] needs: the rules in the space, what Kibana offers of Elastic's (unless
/// `known`), and the job. `jobs_recorded` says whether a job no longer needed may be ours. No
/// Kibana client (a removal where no Kibana is known): no rules seen, only the job is read.
pub async fn observe(
    client: Option<&KibanaClient>,
    es: &Elasticsearch,
    d: &Desired,
    known_offer: Option<Availability>,
    job: JobLook,
    jobs_recorded: bool,
) -> Result<Observed, Error> {
    let k = d.input.kibana;
    // The job first: it decides which job the machine-learning rule watches.
    let job = match job {
        JobLook::Proven(id) if d.needs_job => JobSeen::Proven(id),
        _ if d.needs_job => read_job(es, &k).await?,
        _ if jobs_recorded => {
            let mut ours = Vec::new();
            for id in [mljob::JOB_ID, mljob::JOB_ID_EA] {
                if let Some(j) = es.get_job(id).await?
                    && holder(
                        Marker::from_meta(j.get("custom_settings")).as_ref(),
                        &d.owner,
                    ) == Holder::Us
                {
                    ours.push((id.to_string(), j));
                }
            }
            JobSeen::Leftovers(ours)
        }
        _ => JobSeen::NotRead,
    };
    let Some(client) = client else {
        return Ok(Observed {
            rules: Vec::new(),
            offer: Availability::none("no Kibana known"),
            job,
        });
    };
    let rules = rules::observe(client, &d.space, &d.rules, &d.owner_tag).await?;
    let w = prebuilt::wanted(&d.rules);
    let offer = match known_offer {
        Some(a) => a,
        None if w.is_empty() => Availability::none("no rule of Elastic's is wanted"),
        None => prebuilt::probe(client, &d.space, &k).await?,
    };
    Ok(Observed { rules, offer, job })
}

/// The job the machine-learning rule should watch (Fleet's module job when one exists, either
/// id, the version's first; else the version's id, which the operator creates or holds), and
/// what is there of it.
async fn read_job(es: &Elasticsearch, k: &KibanaFeatures) -> Result<JobSeen, Error> {
    let first = mljob::job_id_for(k);
    let other = if first == mljob::JOB_ID {
        mljob::JOB_ID_EA
    } else {
        mljob::JOB_ID
    };
    let fleet = mljob::fleet_made;
    let mut job = es.get_job(first).await?;
    let mut choice = JobChoice {
        id: first.to_string(),
        fleet: job.as_ref().is_some_and(|j| fleet(j)),
    };
    if job.is_none()
        && let Some(j) = es.get_job(other).await?
        && fleet(&j)
    {
        choice = JobChoice {
            id: other.to_string(),
            fleet: true,
        };
        job = Some(j);
    }
    if choice.fleet {
        // Fleet's module job: Kibana's ML job settings own its datafeed and state.
        return Ok(JobSeen::Read {
            choice,
            job,
            datafeed: None,
            job_state: None,
            datafeed_state: None,
        });
    }
    let feed = mljob::datafeed_id(&choice.id);
    let datafeed = es.get_datafeed(&feed).await?;
    let job_state = match job {
        Some(_) => es.job_state(&choice.id).await?,
        None => None,
    };
    let datafeed_state = match datafeed {
        Some(_) => es.datafeed_state(&feed).await?,
        None => None,
    };
    Ok(JobSeen::Read {
        choice,
        job,
        datafeed,
        job_state,
        datafeed_state,
    })
}

/// One step on the detection side.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create, update or delete a custom rule (never a conflict: those are [`Plan::conflicts`]).
    Rule(RuleAction),
    /// Install Elastic's prebuilt rule at the version Kibana offers.
    InstallPrebuilt { rule_id: String, version: u64 },
    /// Remove a prebuilt rule this owner installed and no longer wants.
    RemovePrebuilt { rule_id: String },
    CreateJob { id: String },
    /// Put this owner's marker (this release) on the job.
    MarkJob { id: String, release: String },
    CreateDatafeed { id: String },
    /// Its indices or query changed: stop, delete, create.
    RecreateDatafeed { id: String },
    OpenJob { id: String },
    StartDatafeed { id: String },
    /// Stop and delete the datafeed, close and delete the job.
    RemoveJob { id: String },
}

impl Action {
    /// Which service holds the object.
    pub fn service(&self) -> Service {
        match self {
            Action::Rule(_) | Action::InstallPrebuilt { .. } | Action::RemovePrebuilt { .. } => {
                Service::Kibana
            }
            _ => Service::Elasticsearch,
        }
    }

    /// What kind of object, for display and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Rule(_) => "detection rule",
            Action::InstallPrebuilt { .. } | Action::RemovePrebuilt { .. } => "prebuilt rule",
            Action::CreateJob { .. }
            | Action::MarkJob { .. }
            | Action::OpenJob { .. }
            | Action::RemoveJob { .. } => "anomaly detection job",
            Action::CreateDatafeed { .. }
            | Action::RecreateDatafeed { .. }
            | Action::StartDatafeed { .. } => "datafeed",
        }
    }

    /// What a removal step took away, for the deletion's event.
    pub fn gone(&self) -> Option<String> {
        match self {
            Action::Rule(RuleAction::Delete { rule_id }) => Some(format!("rule {rule_id}")),
            Action::RemovePrebuilt { rule_id } => {
                Some(format!("Elastic's prebuilt rule {rule_id}"))
            }
            Action::RemoveJob { id } => Some(format!(
                "datafeed {}, anomaly detection job {id}",
                mljob::datafeed_id(id)
            )),
            _ => None,
        }
    }

    fn creates(&self) -> bool {
        matches!(
            self,
            Action::Rule(RuleAction::Create(_))
                | Action::InstallPrebuilt { .. }
                | Action::CreateJob { .. }
                | Action::CreateDatafeed { .. }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Rule(a) => f.write_str(&a.describe()),
            Action::InstallPrebuilt { rule_id, version } => write!(
                f,
                "install Elastic's prebuilt rule {rule_id} (version {version})"
            ),
            Action::RemovePrebuilt { rule_id } => write!(
                f,
                "remove Elastic's prebuilt rule {rule_id} (installed by this owner, no longer wanted)"
            ),
            Action::CreateJob { id } => write!(f, "create anomaly detection job {id}"),
            Action::MarkJob { id, release } => write!(
                f,
                "mark anomaly detection job {id} as installed with release {release}"
            ),
            Action::CreateDatafeed { id } => write!(f, "create datafeed {id}"),
            Action::RecreateDatafeed { id } => {
                write!(f, "recreate datafeed {id} (indices or query changed)")
            }
            Action::OpenJob { id } => write!(f, "open job {id}"),
            Action::StartDatafeed { id } => write!(f, "start datafeed {id}"),
            Action::RemoveJob { id } => write!(
                f,
                "remove datafeed {}; remove anomaly detection job {id}",
                mljob::datafeed_id(id)
            ),
        }
    }
}

/// One planned step; `repair` when it re-creates what the owner recorded as installed.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: Action,
    pub repair: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.repair {
            write!(f, "repair: {}", self.action)
        } else {
            self.action.fmt(f)
        }
    }
}

/// The detection side's plan, in apply order: custom rules, Elastic's prebuilt rules, the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub space: String,
    /// The route each of Elastic's rules takes, for the status message.
    pub route: Route,
    /// The job the machine-learning rule watches (`None`: the rule is not wanted).
    pub job: Option<JobChoice>,
    /// Custom rules wanted after the route (for the count in the status).
    pub rules: usize,
    pub steps: Vec<Step>,
    /// Rules in the way: nothing on this side is applied while any remain.
    pub conflicts: Vec<Conflict>,
    /// A job with our id that is not ours: the rules are applied, the job is not.
    pub job_conflict: Option<String>,
    /// The index patterns the datafeed reads (for the job's messages).
    pub index: Vec<String>,
}

/// A rule with one of the wanted rule_ids (or a rule left under one of Elastic's) that the
/// owner may not take.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub rule_id: String,
    pub detail: String,
}

impl Plan {
    /// The conflicts' details, as the `RulesInstalled` condition says them.
    pub fn conflict_details(&self) -> Vec<String> {
        self.conflicts.iter().map(|c| c.detail.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.conflicts.is_empty() && self.job_conflict.is_none()
    }

    /// Every step's line.
    pub fn lines(&self) -> Vec<String> {
        self.steps.iter().map(ToString::to_string).collect()
    }

    pub fn repairs(&self) -> usize {
        self.steps.iter().filter(|s| s.repair).count()
    }
}

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
    let decision = prebuilt::decide(
        &prebuilt::wanted(&desired),
        &o.offer,
        &o.rules,
        &recorded.prebuilt,
    );
    let custom = prebuilt::custom_only(&desired, &decision);
    let actions = rules::plan(&custom, &o.rules, &d.owner_tag, overwrite);
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
        } if !choice.fleet => {
            let id = &choice.id;
            let feed = mljob::datafeed_id(id);
            match job {
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
                        if have.get("indices") != want.get("indices")
                            || have.get("query") != want.get("query") =>
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

/// What applying did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub done: Vec<Step>,
    /// Elastic rule_ids this owner holds as prebuilt rules after the prebuilt steps (set once
    /// they ran): what it held and still does, plus what Kibana created now; a rule a person
    /// customised since is theirs.
    pub prebuilt_record: Option<Vec<String>>,
    /// The datafeed could not start for want of data (Elasticsearch's reason): the job is open
    /// and waits; the next pass tries again.
    pub waiting: Option<String>,
}

/// Where an apply failed: the rules (the `RulesInstalled` condition says so) or the job.
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub in_rules: bool,
}

/// Carries out a plan in order: custom rules, Elastic's prebuilt rules (one install request),
/// then the job. `enable` enables the prebuilt rules installed. Every step is idempotent.
pub async fn apply(
    client: Option<&KibanaClient>,
    es: &Elasticsearch,
    d: &Desired,
    plan: &Plan,
    enable: bool,
) -> Result<Applied, (Applied, Failed)> {
    let mut out = Applied::default();
    let rules_failed = |error| Failed {
        error,
        in_rules: true,
    };
    if !plan.conflicts.is_empty() {
        let e = Error::Conflict(plan.conflict_details().join("; "));
        return Err((out, rules_failed(e)));
    }
    let kibana_steps = plan
        .steps
        .iter()
        .any(|s| s.action.service() == Service::Kibana);
    if kibana_steps {
        let Some(client) = client else {
            let e = Error::Internal("a Kibana step was planned without a Kibana client".into());
            return Err((out, rules_failed(e)));
        };
        for s in &plan.steps {
            if let Action::Rule(a) = &s.action {
                if let Err(e) = rules::apply(client, &plan.space, a).await {
                    return Err((out, rules_failed(e)));
                }
                out.done.push(s.clone());
            }
        }
        if let Err(e) = apply_prebuilt(client, plan, enable, &mut out).await {
            return Err((out, e));
        }
    }
    if let Err(e) = apply_job(es, d, plan, &mut out).await {
        return Err((
            out,
            Failed {
                error: e,
                in_rules: false,
            },
        ));
    }
    Ok(out)
}

/// The prebuilt steps: one install request for all of them (enabled after when `enable`), then
/// the removals. Sets `out.prebuilt_record`.
pub async fn apply_prebuilt(
    client: &KibanaClient,
    plan: &Plan,
    enable: bool,
    out: &mut Applied,
) -> Result<(), Failed> {
    let decision = &plan.route.decision;
    let installed = prebuilt::apply(client, &plan.space, decision, enable)
        .await
        .map_err(|error| Failed {
            error,
            in_rules: true,
        })?;
    let (removed, customised) = prebuilt::remove(client, &plan.space, &decision.remove)
        .await
        .map_err(|error| Failed {
            error,
            in_rules: false,
        })?;
    out.done.extend(plan.steps.iter().filter(|s| match &s.action {
        Action::InstallPrebuilt { rule_id, .. } => installed.ids.contains(rule_id),
        Action::RemovePrebuilt { rule_id } => removed.contains(rule_id),
        _ => false,
    }).cloned());
    let mut record: Vec<String> = decision
        .ours
        .iter()
        .chain(installed.ids.iter())
        .filter(|id| !removed.contains(id) && !customised.contains(id))
        .cloned()
        .collect();
    record.sort();
    record.dedup();
    out.prebuilt_record = Some(record);
    if !installed.errors.is_empty() {
        return Err(Failed {
            error: Error::Rejected {
                service: Service::Kibana,
                what: "install Elastic's prebuilt rules".into(),
                status: 200,
                detail: installed.errors.join("; "),
            },
            in_rules: true,
        });
    }
    Ok(())
}

/// The job's steps, in plan order. A job in the way is a conflict here, after the rules.
pub async fn apply_job(
    es: &Elasticsearch,
    d: &Desired,
    plan: &Plan,
    out: &mut Applied,
) -> Result<(), Error> {
    if let Some(c) = &plan.job_conflict {
        return Err(Error::Conflict(c.clone()));
    }
    for s in &plan.steps {
        match &s.action {
            Action::CreateJob { id } => {
                es.put_job(id, &mljob::job_body(id, &d.marker)).await?;
            }
            Action::MarkJob { id, .. } => {
                // `_update` replaces the whole map: keep what else it holds (custom_urls).
                let job = es.get_job(id).await?;
                let mut settings = job
                    .as_ref()
                    .and_then(|j| j.get("custom_settings"))
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                settings.insert(MARKER_KEY.into(), json!(d.marker));
                es.update_job(id, &json!({"custom_settings": settings}))
                    .await?;
            }
            Action::CreateDatafeed { id } => {
                let job = plan.job.as_ref().map(|j| j.id.as_str()).unwrap_or_default();
                es.put_datafeed(id, &mljob::datafeed_body(job, &d.input.index))
                    .await?;
            }
            Action::RecreateDatafeed { id } => {
                let job = plan.job.as_ref().map(|j| j.id.as_str()).unwrap_or_default();
                es.stop_datafeed(id).await?;
                es.delete_datafeed(id).await?;
                es.put_datafeed(id, &mljob::datafeed_body(job, &d.input.index))
                    .await?;
            }
            Action::OpenJob { id } => es.open_job(id).await?,
            Action::StartDatafeed { id } => match es.start_datafeed(id).await? {
                None => {}
                // Not done, and not an error: a fresh stack has no DNS data yet.
                Some(reason) => {
                    out.waiting = Some(reason);
                    continue;
                }
            },
            Action::RemoveJob { id } => remove_job(es, id).await?,
            _ => continue,
        }
        out.done.push(s.clone());
    }
    Ok(())
}

async fn remove_job(es: &Elasticsearch, id: &str) -> Result<(), Error> {
    let feed = mljob::datafeed_id(id);
    es.stop_datafeed(&feed).await?;
    es.delete_datafeed(&feed).await?;
    es.close_job(id).await?;
    es.delete_job(id).await
}

/// Removal is a plan against nothing: the prebuilt rules `recorded_prebuilt` says the owner
/// installed in the space (never one a person installed or has customised since), every rule
/// carrying the owner's tag, and, when `jobs_recorded`, the owner's jobs. What is in the way of
/// a desired object does not matter when nothing is desired: conflicts are dropped. Returns
/// what went.
pub async fn remove(
    client: Option<(&KibanaClient, &str)>,
    es: &Elasticsearch,
    owner: &Owner,
    recorded_prebuilt: &[String],
    jobs_recorded: bool,
) -> Result<Vec<String>, Error> {
    let d = Desired::nothing(owner, client.map_or("default", |(_, space)| space));
    let kb = client.map(|(c, _)| c);
    let observed = observe(kb, es, &d, None, JobLook::Read, jobs_recorded).await?;
    let recorded = Recorded {
        rules: true,
        prebuilt: recorded_prebuilt.to_vec(),
        jobs: Vec::new(),
    };
    let mut plan = diff(&d, &observed, &recorded, false);
    plan.conflicts.clear();
    plan.job_conflict = None;
    let applied = apply(kb, es, &d, &plan, false)
        .await
        .map_err(|(_, f)| f.error)?;
    Ok(applied.done.iter().filter_map(|s| s.action.gone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kibana::StackVersion;

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
            [
                vec![Service::Kibana; 4],
                vec![Service::Elasticsearch; 4]
            ]
            .concat()
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
        assert_eq!(p.repairs(), 6, "4 rules, the job and the datafeed: {:?}", p.lines());
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
        assert!(installs.iter().all(|s| s.action.service() == Service::Kibana));
        assert!(!p.steps.iter().any(|s| matches!(s.action, Action::Rule(_))));
        assert!(p.route.custom.is_empty());
        // The job is still the operator's to run.
        assert!(p.steps.iter().any(|s| matches!(s.action, Action::CreateJob { .. })));
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
        assert!(p.steps.iter().all(|s| s.action.service() == Service::Kibana));
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
        assert!(ml["machine_learning_job_id"].to_string().contains(mljob::JOB_ID_EA));

        let mut o = nothing_there(&d);
        if let JobSeen::Read { job, .. } = &mut o.job {
            *job = Some(json!({"custom_settings": {}}));
        }
        let p = diff(&d, &o, &Recorded::default(), false);
        assert!(p.job_conflict.as_ref().is_some_and(|c| c.contains("overwrite")));
        assert!(!p.steps.iter().any(|s| s.action.service() == Service::Elasticsearch));
        let p = diff(&d, &o, &Recorded::default(), true);
        assert!(p.job_conflict.is_none());
        assert!(matches!(p.steps[4].action, Action::MarkJob { .. }), "{:?}", p.lines());
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
                format!("rule {}", ours["rule_id"].as_str().unwrap()),
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
        assert_eq!(l[8].text, format!("start datafeed {}", mljob::datafeed_id(mljob::JOB_ID)));
        assert_eq!(whole.pending().len(), 9);
        assert!(!whole.is_empty());
    }
}
