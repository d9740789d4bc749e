//! Kubernetes events (events.k8s.io/v1) with client-go's aggregation: a repeat of the same
//! event within a few minutes bumps its `series` instead of creating a new object.
//!
//! kube-runtime's `Recorder` (5.0) keys its cache on type, action, reason, reporter and the
//! objects, but not the note: a second `Installed` or `DriftRepaired` within six minutes became
//! a series of the first and kept the first note, so a repair showed the install's actions.
//! client-go's key includes the note (`getKey` in
//! k8s.io/client-go/tools/events/event_broadcaster.go, v0.20+), so does ours: each distinct note
//! is its own event; only true repeats are folded.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, ResourceExt};

/// How long a published event is remembered for folding repeats (kube-runtime's and
/// client-go's window).
const CACHE_TTL: SignedDuration = SignedDuration::from_mins(6);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: (Option<String>, Option<String>, Option<String>),
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
}

pub struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: Mutex<HashMap<Key, K8sEvent>>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            warning: ev.type_ == EventType::Warning,
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
        };
        let seen = {
            let mut cache = self.cache.lock().expect("events cache");
            cache.retain(|_, e| last_seen(e).is_some_and(|t| t + CACHE_TTL > now));
            cache.get(&key).cloned()
        };
        let api: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let event = match seen {
            Some(mut e) => {
                e.series = Some(EventSeries {
                    count: e.series.as_ref().map_or(2, |s| s.count + 1),
                    last_observed_time: MicroTime(now),
                });
                match api
                    .patch(&e.name_any(), &PatchParams::default(), &Patch::Merge(&e))
                    .await
                {
                    Ok(_) => e,
                    // Expired or deleted on the server: start over.
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        let fresh = self.fresh(ev, regarding, now);
                        api.create(&PostParams::default(), &fresh).await?;
                        fresh
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let fresh = self.fresh(ev, regarding, now);
                api.create(&PostParams::default(), &fresh).await?;
                fresh
            }
        };
        self.cache.lock().expect("events cache").insert(key, event);
        Ok(())
    }

    fn fresh(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

fn last_seen(e: &K8sEvent) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
}
