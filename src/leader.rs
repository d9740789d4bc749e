//! Leader election on a `coordination.k8s.io/v1` Lease (GA since Kubernetes 1.14), with the
//! semantics of client-go's leaderelection: a Lease is taken over once its record has not
//! changed for `leaseDurationSeconds` *as observed locally* (no trust in other nodes' clocks),
//! the leader renews every `renew_period` and gives up when no renewal succeeded for
//! `renew_deadline` (shorter than the lease duration, so it stops before anyone may take over).
//!
//! Only `get`, `create` and `update` are used, which is what the chart's Role grants.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::Health;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a Lease is honoured without renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// The leader steps down when no renewal succeeded for this long.
    pub renew_deadline: Duration,
    /// How often a standby looks at the Lease.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        LeaseConfig {
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The holder identity: `POD_NAME`, else `<hostname>_<pid>`.
pub fn default_identity() -> String {
    if let Some(p) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return p;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "dga-operator".to_string());
    format!("{host}_{}", std::process::id())
}

/// What one look at the Lease found.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// We hold it (acquired or renewed).
    Leading,
    /// Someone else holds it (or it is free but not yet expired from our point of view).
    Held(Option<String>),
    /// Our write lost a race; look again.
    Conflict,
}

/// The part of a Lease record whose change proves its holder alive.
type Record = (Option<String>, Option<jiff::Timestamp>, Option<i32>);

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The last record seen and when it was first seen (local clock).
    observed: Option<(Record, Instant)>,
    last_holder: Option<Option<String>>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            last_holder: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    fn spec_for_us(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        let prev_holder = previous
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        let ours = prev_holder == Some(self.cfg.identity.as_str());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs() as i32),
            acquire_time: if ours {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    fn note(&mut self, spec: &LeaseSpec) -> Instant {
        let record: Record = (
            spec.holder_identity.clone().filter(|h| !h.is_empty()),
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_duration_seconds,
        );
        match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let spec = self.spec_for_us(None);
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.note(&spec);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let seen_at = self.note(&spec);
        let duration = spec
            .lease_duration_seconds
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or(self.cfg.duration);
        let ours = holder.as_deref() == Some(self.cfg.identity.as_str());
        let expired = holder.is_none() || seen_at.elapsed() >= duration;
        if !ours && !expired {
            return Ok(Attempt::Held(holder));
        }
        let new_spec = self.spec_for_us(Some(&spec));
        lease.spec = Some(new_spec.clone());
        // metadata.resourceVersion makes the update a compare-and-swap.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.note(&new_spec);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the Lease. The process counts as ready (a standby) once
    /// the Lease could be read.
    pub async fn acquire(&mut self, health: &Health) {
        loop {
            health.beat();
            let attempt =
                tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew())
                    .await
                    .unwrap_or_else(|_| Ok(Attempt::Conflict));
            match attempt {
                Ok(Attempt::Leading) => {
                    health.set_ready();
                    info!(
                        lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name),
                        identity = self.cfg.identity,
                        "became the leader"
                    );
                    self.last_holder = Some(Some(self.cfg.identity.clone()));
                    return;
                }
                Ok(Attempt::Held(holder)) => {
                    health.set_ready();
                    if self.last_holder.as_ref() != Some(&holder) {
                        info!(
                            leader = holder.as_deref().unwrap_or("<none>"),
                            identity = self.cfg.identity,
                            "standing by: another instance holds the lease"
                        );
                        self.last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => warn!(error = %e, "cannot read or take the leader lease"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the Lease while leading; returns why leadership was lost.
    pub async fn keep(&mut self, health: &Health) -> String {
        let mut last_ok = Instant::now();
        let mut delay = self.cfg.renew_period;
        loop {
            tokio::time::sleep(delay).await;
            health.beat();
            let left = self.cfg.renew_deadline.saturating_sub(last_ok.elapsed());
            let attempt = match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(a) => a,
                Err(_) => Ok(Attempt::Conflict),
            };
            match attempt {
                Ok(Attempt::Leading) => {
                    last_ok = Instant::now();
                    delay = self.cfg.renew_period;
                    continue;
                }
                Ok(Attempt::Held(holder)) => {
                    return format!(
                        "the lease is held by {}",
                        holder.as_deref().unwrap_or("nobody")
                    );
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => warn!(error = %e, "cannot renew the leader lease"),
            }
            if last_ok.elapsed() >= self.cfg.renew_deadline {
                return format!(
                    "the lease could not be renewed for {:?}",
                    self.cfg.renew_deadline
                );
            }
            delay = self
                .cfg
                .retry_period
                .min(self.cfg.renew_deadline.saturating_sub(last_ok.elapsed()));
        }
    }

    /// Gives the Lease up (holder cleared, duration 1s) so a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await?;
        info!(identity = self.cfg.identity, "released the leader lease");
        Ok(())
    }
}
