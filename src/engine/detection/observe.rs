//! One read of the detection side: the rules in the space, what Kibana offers of Elastic's
//! rules, and the anomaly job (which one, and its datafeed and states).

use serde_json::Value;

use super::Desired;
use crate::elasticsearch::Elasticsearch;
use crate::engine::mljob::{self, JobChoice};
use crate::engine::{Holder, Marker, holder};
use crate::error::Error;
use crate::kibana::KibanaClient;
use crate::kibana::prebuilt::{self, Availability};
use crate::kibana::rules;

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

/// Reads what [`super::diff()`] needs: the rules in the space, what Kibana offers of Elastic's (unless
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
    // The rules first: an installed prebuilt machine-learning rule of Elastic's names the job
    // it reads, and that job is the one to keep, whatever the stack version would choose.
    let rules = match client {
        Some(c) => Some(rules::observe(c, &d.space, &d.rules, &d.owner_tag).await?),
        None => None,
    };
    let watched = rules.as_deref().and_then(watched_by_prebuilt);
    // Then the job: it decides which job the custom machine-learning rule watches.
    let job = match job {
        JobLook::Proven(id) if d.needs_job => JobSeen::Proven(id),
        _ if d.needs_job => read_job(es, watched.unwrap_or(mljob::job_id_for(&k)), d).await?,
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
    let (Some(client), Some(rules)) = (client, rules) else {
        return Ok(Observed {
            rules: Vec::new(),
            offer: Availability::none("no Kibana known"),
            job,
        });
    };
    let w = prebuilt::wanted(&d.rules);
    let offer = match known_offer {
        Some(a) => a,
        None if w.is_empty() => Availability::none("no rule of Elastic's is wanted"),
        None => prebuilt::probe(client, &d.space, &k).await?,
    };
    Ok(Observed { rules, offer, job })
}

/// The job the machine-learning rule should watch (Fleet's module job when one exists, either
/// id, `first` first; else `first`, which the operator creates or holds), and what is there of
/// it.
async fn read_job(es: &Elasticsearch, first: &'static str, d: &Desired) -> Result<JobSeen, Error> {
    let other = if first == mljob::JOB_ID {
        mljob::JOB_ID_EA
    } else {
        mljob::JOB_ID
    };
    let mut job = es.get_job(first).await?;
    let mut choice = JobChoice {
        id: first.to_string(),
        fleet: job.as_ref().is_some_and(mljob::fleet_made),
    };
    if job.is_none()
        && let Some(j) = es.get_job(other).await?
        && mljob::fleet_made(&j)
    {
        choice = JobChoice {
            id: other.to_string(),
            fleet: true,
        };
        job = Some(j);
    }
    let marked_ours = job.as_ref().is_some_and(|j| {
        holder(
            Marker::from_meta(j.get("custom_settings")).as_ref(),
            &d.owner,
        ) == Holder::Us
    });
    // One the owner had Kibana's module set up is the owner's to keep running.
    choice.fleet &= !marked_ours;
    if choice.fleet {
        // Fleet's module job someone set up: Kibana's ML job settings own its datafeed and
        // state.
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

/// The job an installed prebuilt machine-learning rule of Elastic's reads, when it is one of
/// Elastic's two DGA jobs. Elastic moved the rule from `dga_high_sum_probability` to
/// `dga_high_sum_probability_ea` with 9.4 (detection-rules d8a39869), but an installed prebuilt
/// rule moves only when someone takes Kibana's rule update (the operator leaves upgrades to
/// Kibana's Rule Updates): after a stack upgrade across 9.4 the installed rule still reads the
/// old job, which must keep running.
pub fn watched_by_prebuilt(rules: &[Value]) -> Option<&'static str> {
    rules
        .iter()
        .filter(|r| {
            rules::is_prebuilt(r)
                && r.get("type").and_then(Value::as_str) == Some("machine_learning")
        })
        .flat_map(|r| match r.get("machine_learning_job_id") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        })
        .find_map(|id| {
            [mljob::JOB_ID, mljob::JOB_ID_EA]
                .into_iter()
                .find(|k| *k == id)
        })
}
