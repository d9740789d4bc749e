//! The detection side of an install, as engine objects: the Kibana detection rules (custom
//! rules, and the choice to install Elastic's prebuilt ones), and the anomaly detection job and
//! datafeed the machine-learning rule watches. Same verbs as the Elasticsearch objects:
//! [`build`] (pure) → [`observe`] → [`diff`] (pure) → [`apply`], so a pass, `mode: Plan`,
//! `dga-operator plan` and a removal all read one list of [`Action`]s.
//!
//! The job lives in Elasticsearch but belongs here: which job (and whether one at all) follows
//! from the rules and Kibana's version, so it is planned with them.

//! Files: this one holds the desired state ([`build`]) and the plan's types; [`observe`],
//! [`diff`] and [`apply`] hold the verbs.

mod apply;
mod diff;
mod observe;
#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::Value;

pub use apply::{Applied, Failed, apply, apply_job, apply_prebuilt, remove};
pub use diff::diff;
pub use observe::{JobLook, JobSeen, Observed, observe};

use super::Marker;
use super::Owner;
use super::mljob::{self, JobChoice};
use crate::error::{Error, Service};
use crate::kibana::prebuilt::Route;
use crate::kibana::rules::{self, RuleAction, RulesInput};
use crate::kibana::{KibanaFeatures, owner_tag};

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
    /// The Fleet route: a missing job is created through Kibana's setup of this ML module (the
    /// package's), so Kibana shows it as the module's; then marked as the owner's.
    pub module: Option<String>,
}

/// Observe then diff: what a front door runs to know what to do (`recorded.jobs` says whether
/// a job no longer needed may be the owner's).
pub async fn plan(
    client: &crate::kibana::KibanaClient,
    es: &crate::elasticsearch::Elasticsearch,
    d: &Desired,
    known_offer: Option<crate::kibana::prebuilt::Availability>,
    job: JobLook,
    recorded: &Recorded,
    overwrite: bool,
) -> Result<Plan, Error> {
    let jobs_recorded = !recorded.jobs.is_empty();
    let o = observe(Some(client), es, d, known_offer, job, jobs_recorded).await?;
    Ok(diff(d, &o, recorded, overwrite))
}

/// What Kibana's version (from `GET /api/status`) changes in the rules and the job.
pub fn features(version: &str) -> Result<KibanaFeatures, Error> {
    crate::kibana::StackVersion::parse(version)
        .map(KibanaFeatures::new)
        .ok_or_else(|| Error::Rejected {
            service: Service::Kibana,
            what: "GET /api/status".into(),
            status: 200,
            detail: format!("version `{version}` is not a stack version"),
        })
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
        module: None,
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
            module: None,
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

/// One step on the detection side.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create, update or delete a custom rule (never a conflict: those are [`Plan::conflicts`]).
    Rule(RuleAction),
    /// Install Elastic's prebuilt rule at the version Kibana offers.
    InstallPrebuilt {
        rule_id: String,
        version: u64,
    },
    /// Remove a prebuilt rule this owner installed and no longer wants.
    RemovePrebuilt {
        rule_id: String,
    },
    /// Enable a prebuilt rule this owner installed that nobody enabled since (the enable step
    /// of the pass that installed it failed).
    EnablePrebuilt {
        rule_id: String,
    },
    CreateJob {
        id: String,
    },
    /// Create the job and its datafeed through Kibana's setup of ML module `module` (and start
    /// the datafeed, or leave it waiting for data).
    SetupModule {
        module: String,
        job: String,
    },
    /// Put this owner's marker (this release) on the job.
    MarkJob {
        id: String,
        release: String,
    },
    CreateDatafeed {
        id: String,
    },
    /// Its indices or query changed: stop, delete, create.
    RecreateDatafeed {
        id: String,
    },
    OpenJob {
        id: String,
    },
    StartDatafeed {
        id: String,
    },
    /// Stop and delete the datafeed, close and delete the job.
    RemoveJob {
        id: String,
    },
}

impl Action {
    /// Which service holds the object.
    pub fn service(&self) -> Service {
        match self {
            Action::Rule(_)
            | Action::InstallPrebuilt { .. }
            | Action::RemovePrebuilt { .. }
            | Action::EnablePrebuilt { .. }
            | Action::SetupModule { .. } => Service::Kibana,
            _ => Service::Elasticsearch,
        }
    }

    /// What kind of object, for display and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Rule(_) => "detection rule",
            Action::InstallPrebuilt { .. }
            | Action::RemovePrebuilt { .. }
            | Action::EnablePrebuilt { .. } => "prebuilt rule",
            Action::CreateJob { .. }
            | Action::SetupModule { .. }
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
            Action::Rule(RuleAction::Delete { rule_id }) => {
                Some(format!("detection rule {rule_id}"))
            }
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
                | Action::SetupModule { .. }
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
            Action::EnablePrebuilt { rule_id } => write!(
                f,
                "enable Elastic's prebuilt rule {rule_id} (installed by this owner, never enabled)"
            ),
            Action::CreateJob { id } => write!(f, "create anomaly detection job {id}"),
            Action::SetupModule { module, job } => write!(
                f,
                "create anomaly detection job {job} and datafeed {} through Kibana's setup of ML module {module}",
                mljob::datafeed_id(job)
            ),
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

    /// The `RulesInstalled` message: which route each of Elastic's rules took, and why
    /// (`version`: Kibana's).
    pub fn route_message(&self, version: &str) -> String {
        let (d, avail) = (&self.route.decision, &self.route.offer);
        let (custom, space) = (self.route.custom.len(), self.space.as_str());
        let mut parts = Vec::new();
        let prebuilt = d.prebuilt();
        if !prebuilt.is_empty() {
            let ours = d.ours.len() + d.install.len();
            let persons = if d.persons.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} already installed by someone else, used as they are and not managed ({})",
                    d.persons.len(),
                    d.persons.join(", ")
                )
            };
            parts.push(format!(
                "Elastic's prebuilt rules through Kibana {version}'s prebuilt-rules API: {} in space {space}, {ours} installed by this DgaModel{persons}",
                prebuilt.len()
            ));
        }
        if !d.blocked.is_empty() {
            parts.push(format!(
                "{} of Elastic's prebuilt rules not installed while another rule holds their rule_id (installing would make two rules with one rule_id; delete that rule, or set overwrite if the old CLI or this operator left it): {}",
                d.blocked.len(),
                d.blocked
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if custom > 0 || (prebuilt.is_empty() && d.blocked.is_empty()) {
            let why = if !avail.api {
                avail.why_not.clone()
            } else if d.custom.is_empty() {
                "rules of the release that are not Elastic's".to_string()
            } else {
                format!(
                    "Kibana {version} does not offer Elastic's DGA rules as prebuilt rules: its security_detection_engine package is absent (air-gapped?) or lacks them"
                )
            };
            parts.push(format!(
                "custom rules under the operator's rule_ids ({why}): {custom} rules in space {space}"
            ));
        }
        parts.join("; ")
    }

    /// The route in one line, as `dga-operator plan` and `setup` print it.
    pub fn route_line(&self) -> String {
        let route = &self.route;
        let prebuilt = route.decision.prebuilt().len();
        let why = if route.offer.api {
            "not offered by Kibana's prebuilt-rules API".to_string()
        } else {
            route.offer.why_not.clone()
        };
        let blocked = match route.decision.blocked.len() {
            0 => String::new(),
            b => format!("; {b} of Elastic's held back while another rule holds their rule_id"),
        };
        let line = match (prebuilt, route.custom.len()) {
            (0, 0) if !blocked.is_empty() => "no rules installed".to_string(),
            (0, n) => format!("{n} custom rules under the operator's rule_ids ({why})"),
            (p, 0) => {
                format!("{p} of Elastic's prebuilt rules through Kibana's prebuilt-rules API")
            }
            (p, n) => format!(
                "{p} of Elastic's prebuilt rules through Kibana's prebuilt-rules API, {n} custom rules ({why})"
            ),
        };
        line + &blocked
    }
}
