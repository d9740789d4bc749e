//! One plan across both services: the Elasticsearch objects ([`super::diff::Plan`]) and the
//! detection side ([`super::detection::Plan`]: Kibana rules, the anomaly job and its datafeed),
//! in apply order. `mode: Plan` (status.plan), `dga-operator plan`, the held-back conditions and
//! the metrics all read it, so every object is listed and counted alike.

use std::fmt;

use super::detection;
use super::diff;
use super::package;
use crate::error::Service;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The Fleet route: the package, installed before anything that calls its pipelines.
    pub package: Option<package::Plan>,
    pub es: diff::Plan,
    /// `None`: no Kibana known (or not reached), so no rules and no job were planned.
    pub detection: Option<detection::Plan>,
}

/// One listed step: which service holds the object, and what happens to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub service: Service,
    pub text: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Plan {
    /// Every step, Elasticsearch's objects first (the order apply takes).
    pub fn lines(&self) -> Vec<Line> {
        let pkg = self
            .package
            .iter()
            .flat_map(|p| p.install.iter())
            .map(|i| Line {
                service: Service::Kibana,
                text: i.to_string(),
            });
        let es = self.es.actions.iter().map(|a| Line {
            service: Service::Elasticsearch,
            text: a.to_string(),
        });
        let det = self.detection.iter().flat_map(|d| {
            d.steps.iter().map(|s| Line {
                service: s.action.service(),
                text: s.to_string(),
            })
        });
        pkg.chain(es).chain(det).collect()
    }

    /// Everything in the way, both services.
    pub fn conflicts(&self) -> Vec<String> {
        let mut c: Vec<String> = self
            .package
            .iter()
            .filter_map(|p| p.conflict.clone())
            .collect();
        c.extend(self.es.conflicts.iter().cloned());
        if let Some(d) = &self.detection {
            c.extend(d.conflict_details());
            c.extend(d.job_conflict.iter().cloned());
        }
        c
    }

    /// No step and nothing in the way.
    pub fn is_empty(&self) -> bool {
        self.package.as_ref().is_none_or(package::Plan::is_empty)
            && self.es.is_empty()
            && self
                .detection
                .as_ref()
                .is_none_or(detection::Plan::is_empty)
    }

    /// Conflicts then steps, one line each (`conflict: ...`), for status.plan and events.
    pub fn pending(&self) -> Vec<String> {
        self.conflicts()
            .into_iter()
            .map(|c| format!("conflict: {c}"))
            .chain(self.lines().into_iter().map(|l| l.text))
            .collect()
    }
}
