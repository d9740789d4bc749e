//! One read of what the cluster holds for the ids a pass cares about.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Desired, MARKER_KEY, MODEL_TAG};
use crate::elasticsearch::Elasticsearch;
use crate::error::Error;

/// The ids to look at: what the release wants plus what the owner is known to have installed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ids {
    pub models: BTreeSet<String>,
    pub scripts: BTreeSet<String>,
    pub pipelines: BTreeSet<String>,
    /// Index names or patterns whose pipeline settings matter (wiring).
    pub indices: BTreeSet<String>,
    /// `@custom` hooks holding the owner's `pipeline` processor.
    pub hooks: BTreeSet<String>,
    /// Composable index templates whose `index.final_pipeline` the owner set (data streams).
    pub templates: BTreeSet<String>,
}

impl Ids {
    /// What a pass looks at: the release's objects plus what the owner is known to hold.
    pub fn wanted(desired: &Desired, known: &Ids) -> Ids {
        let mut ids = known.clone();
        ids.models.insert(desired.model_id.clone());
        ids.scripts
            .extend(desired.scripts.iter().map(|(id, _)| id.clone()));
        ids.pipelines
            .extend(desired.pipelines.iter().map(|(id, _)| id.clone()));
        ids.pipelines.extend(desired.fleet_pipelines());
        ids.indices.extend(desired.wire_indices.iter().cloned());
        // Hooks are pipelines to read; those recorded are read too, so one the spec no longer
        // names is unhooked.
        ids.pipelines.extend(desired.hooks.iter().cloned());
        ids.pipelines.extend(known.hooks.iter().cloned());
        ids
    }

    /// Updates what an owner holds after one applied action.
    pub fn record(&mut self, a: &super::Action) {
        use super::Action::*;
        match a {
            PutModel { id, .. } => drop(self.models.insert(id.clone())),
            PutScript { id, .. } => drop(self.scripts.insert(id.clone())),
            PutPipeline { id, .. } => drop(self.pipelines.insert(id.clone())),
            DeleteModel { id, .. } => drop(self.models.remove(id)),
            DeleteScript { id, .. } => drop(self.scripts.remove(id)),
            DeletePipeline { id, .. } => drop(self.pipelines.remove(id)),
            WireIndex { index, .. } => drop(self.indices.insert(index.clone())),
            UnwireIndex { index, .. } => drop(self.indices.remove(index)),
            // Stale: ours taken out of a hook where Fleet's own enrichment runs.
            PutHook {
                id,
                reason: super::Reason::Stale,
            } => drop(self.hooks.remove(id)),
            PutHook { id, .. } => drop(self.hooks.insert(id.clone())),
            Unhook { id, .. } => drop(self.hooks.remove(id)),
            WireTemplate { name, .. } => drop(self.templates.insert(name.clone())),
            UnwireTemplate { name, .. } => drop(self.templates.remove(name)),
        }
    }
}

/// An index's pipeline settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexPipelines {
    pub default_pipeline: Option<String>,
    pub final_pipeline: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Models by id: every model tagged by the operator, plus the ids asked for.
    pub models: BTreeMap<String, Value>,
    /// Stored scripts (`{"lang","source"}`) by id; absent ids are not in the map.
    pub scripts: BTreeMap<String, Value>,
    /// Pipelines by id; absent ids are not in the map.
    pub pipelines: BTreeMap<String, Value>,
    /// Existing indices matching `Ids::indices`.
    pub indices: BTreeMap<String, IndexPipelines>,
    /// Composable index templates by name (`GET _index_template`): those of the data streams
    /// `Ids::indices` match, and those recorded as wired.
    pub templates: BTreeMap<String, Value>,
    /// The templates a rollover of the data streams `Ids::indices` match takes its settings
    /// from: these get `index.final_pipeline`.
    pub stream_templates: BTreeSet<String>,
}

pub async fn observe(es: &Elasticsearch, ids: &Ids) -> Result<Observed, Error> {
    let mut models = es.get_models_tagged(MODEL_TAG).await?;
    let untagged: Vec<String> = ids
        .models
        .iter()
        .filter(|id| !models.contains_key(*id))
        .cloned()
        .collect();
    if !untagged.is_empty() {
        models.extend(es.get_models(&untagged).await?);
    }
    let mut scripts = BTreeMap::new();
    for id in &ids.scripts {
        if let Some(s) = es.get_script(id).await? {
            scripts.insert(id.clone(), s);
        }
    }
    let pipelines = es
        .get_pipelines(&ids.pipelines.iter().cloned().collect::<Vec<_>>())
        .await?;
    let patterns: Vec<String> = ids.indices.iter().cloned().collect();
    let (indices, streams) = if patterns.is_empty() {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        (
            es.index_pipelines(&patterns).await?,
            es.data_stream_templates(&patterns).await?,
        )
    };
    let stream_templates: BTreeSet<String> = streams.into_values().collect();
    let mut templates = BTreeMap::new();
    for name in stream_templates.iter().chain(&ids.templates) {
        if !templates.contains_key(name)
            && let Some(t) = es.get_index_template(name).await?
        {
            templates.insert(name.clone(), t);
        }
    }
    Ok(Observed {
        models,
        scripts,
        pipelines,
        indices,
        templates,
        stream_templates,
    })
}

/// What a glance at a settled install found.
#[derive(Clone, Debug, PartialEq)]
pub enum Glance {
    /// Every object as the last full pass left it, and the canary run passed or could not
    /// prove anything; the caller compares it with the last run's message.
    Unchanged(super::verify::Verdict),
    /// Something differs (said how): a full pass must look and repair.
    Changed(String),
    /// The cluster does not answer the cluster state read: always use full passes.
    Unavailable,
}

/// The anomaly job and datafeed a glance expects to be running.
#[derive(Clone, Copy, Debug)]
pub struct JobTasks<'a> {
    pub job: &'a str,
    pub datafeed: &'a str,
}

/// A resync's look at an install whose last full pass succeeded, in three reads instead of
/// one per object: the pipelines (hooks included), one filtered cluster state read (scripts, ML
/// tasks, the wired indices' pipeline settings, the wired templates' pipeline settings), and the
/// canary `_simulate`. The model is not read: trained models cannot be changed in place, and
/// the canary run fails if ours is gone. Index patterns or template names `filter_path` cannot
/// express cost their own read (`_settings`, `_index_template`). Anything unexpected is
/// `Changed`, so a full pass decides; a glance never repairs anything itself.
pub async fn glance(
    es: &Elasticsearch,
    desired: &Desired,
    known: &Ids,
    overwrite: bool,
    job: Option<JobTasks<'_>>,
) -> Result<Glance, Error> {
    let ids = Ids::wanted(desired, known);
    let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();

    let pipelines = es.get_pipelines(&list(&ids.pipelines)).await?;
    // Recorded indices a wire pattern covers need no filter entry of their own.
    let patterns: Vec<String> = ids
        .indices
        .iter()
        .filter(|i| {
            desired.wire_indices.contains(i)
                || !desired.wire_indices.iter().any(|p| {
                    super::diff::wildcard(p, i)
                        || backing_stream(i).is_some_and(|s| super::diff::wildcard(p, s))
                })
        })
        .cloned()
        .collect();
    let index_segments = index_segments(&patterns);
    let template_segments = ids
        .templates
        .iter()
        .map(|t| escape_segment(t))
        .collect::<Option<Vec<_>>>();
    let extra = crate::elasticsearch::GlanceExtra {
        index_segments: index_segments.clone().unwrap_or_default(),
        template_segments: template_segments.clone().unwrap_or_default(),
    };
    let Some(meta) = es
        .glance_metadata(&list(&ids.scripts), job.is_some(), &extra)
        .await?
    else {
        return Ok(Glance::Unavailable);
    };
    let indices = if patterns.is_empty() {
        BTreeMap::new()
    } else if index_segments.is_some() {
        resolve_like_settings(&patterns, &meta.indices)
    } else {
        es.index_pipelines(&patterns).await?
    };
    let templates = if template_segments.is_some() {
        meta.templates.clone()
    } else {
        let mut t = BTreeMap::new();
        for name in &ids.templates {
            if let Some(v) = es.get_index_template(name).await? {
                t.insert(name.clone(), v);
            }
        }
        t
    };
    let assumed_model = serde_json::json!({"metadata": {MARKER_KEY: desired.marker}});
    let observed = Observed {
        models: BTreeMap::from([(desired.model_id.clone(), assumed_model)]),
        scripts: meta.scripts,
        pipelines,
        indices,
        templates,
        // The data streams' templates as the last full pass found them; a new data stream
        // shows as a backing index without the setting, and that starts a full pass.
        stream_templates: ids.templates.clone(),
    };
    let plan = super::diff(desired, &observed, known, overwrite);
    if !plan.is_empty() {
        let why: Vec<String> = plan
            .actions
            .iter()
            .map(ToString::to_string)
            .chain(plan.conflicts.iter().cloned())
            .collect();
        return Ok(Glance::Changed(why.join("; ")));
    }
    if let Some(t) = job {
        let running = |task: String, want: &str| {
            meta.tasks
                .get(&task)
                .is_some_and(|s| s.as_deref().is_none_or(|s| s == want))
        };
        if !running(format!("job-{}", t.job), "opened") {
            return Ok(Glance::Changed(format!("job {} is not open", t.job)));
        }
        if !running(format!("datafeed-{}", t.datafeed), "started") {
            return Ok(Glance::Changed(format!(
                "datafeed {} is not started",
                t.datafeed
            )));
        }
    }
    // A failed canary run is never trusted as "unchanged": the model, a script or the licence
    // may be gone, and only a full pass reads them all.
    Ok(
        match super::verify::verify(
            es,
            desired.router_pipeline(),
            &desired.model_id,
            &desired.result_fields(),
        )
        .await?
        {
            super::verify::Verdict::Failed(problem) => Glance::Changed(problem),
            v => Glance::Unchanged(v),
        },
    )
}

/// A `filter_path` segment naming `name` literally: its dots escaped (`FilterPath` splits on
/// unescaped dots, in every version; `*` stays a glob). None for what a segment cannot say.
fn escape_segment(name: &str) -> Option<String> {
    if name.is_empty() || name.contains([',', '\\']) || name.starts_with(['-', '<', '+']) {
        return None;
    }
    Some(name.replace('.', "\\."))
}

/// The segments under `metadata.indices` that cover what `GET {patterns}/_settings` resolves:
/// each pattern, and the backing indices of the data streams it matches
/// (`.ds-<stream>-<date>-<generation>`, hidden, so `packetbeat-*` alone does not match them).
/// None when a pattern cannot be written as a segment.
fn index_segments(patterns: &[String]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for p in patterns {
        if p == "_all" {
            return None;
        }
        out.push(escape_segment(p)?);
        if !p.starts_with('.') {
            let backing = if p.ends_with('*') {
                format!(".ds-{p}")
            } else {
                format!(".ds-{p}-*")
            };
            out.push(escape_segment(&backing)?);
        }
    }
    Some(out)
}

/// The data stream a backing index belongs to, from its name: `.ds-<stream>-<yyyy.MM.dd>-<gen>`
/// (7.11 on, `DataStream.getDefaultBackingIndexName`) or `.ds-<stream>-<gen>` (7.9, 7.10).
pub fn backing_stream(index: &str) -> Option<&str> {
    let rest = index.strip_prefix(".ds-")?;
    let (head, generation) = rest.rsplit_once('-')?;
    if generation.len() != 6 || !generation.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let is_date = |d: &str| {
        let b = d.as_bytes();
        d.len() == 10
            && b[4] == b'.'
            && b[7] == b'.'
            && d.bytes().filter(u8::is_ascii_digit).count() == 8
    };
    Some(match head.rsplit_once('-') {
        Some((stream, date)) if is_date(date) => stream,
        _ => head,
    })
}

/// The indices `GET {patterns}/_settings?expand_wildcards=open&ignore_unavailable=true` would
/// answer with, from the cluster state's: open ones only; a wildcard matches neither hidden
/// nor dot-prefixed indices (unless the pattern starts with a dot); a data stream the pattern
/// matches brings its backing indices (`IndexNameExpressionResolver`).
fn resolve_like_settings(
    patterns: &[String],
    seen: &BTreeMap<String, crate::elasticsearch::StateIndex>,
) -> BTreeMap<String, IndexPipelines> {
    let wildcard = super::diff::wildcard;
    let mut out = BTreeMap::new();
    for (name, i) in seen {
        if !i.open {
            continue;
        }
        let hit = patterns.iter().any(|p| {
            if !p.contains('*') {
                return p == name || backing_stream(name) == Some(p.as_str());
            }
            let direct =
                wildcard(p, name) && !i.hidden && (!name.starts_with('.') || p.starts_with('.'));
            direct || backing_stream(name).is_some_and(|s| wildcard(p, s))
        });
        if hit {
            out.insert(name.clone(), i.pipelines.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elasticsearch::StateIndex;

    #[test]
    fn backing_index_names_give_their_stream() {
        assert_eq!(
            backing_stream(".ds-packetbeat-8.17.0-2026.12.05-000002"),
            Some("packetbeat-8.17.0")
        );
        assert_eq!(backing_stream(".ds-logs-x-000001"), Some("logs-x"));
        assert_eq!(backing_stream("packetbeat-8.17.0"), None);
        assert_eq!(backing_stream(".ds-a-2026.12.05-1"), None);
    }

    #[test]
    fn patterns_become_escaped_segments() {
        assert_eq!(
            index_segments(&["packetbeat-*".into()]).unwrap(),
            ["packetbeat-*", "\\.ds-packetbeat-*"]
        );
        assert_eq!(
            index_segments(&["logs-dns.x".into()]).unwrap(),
            ["logs-dns\\.x", "\\.ds-logs-dns\\.x-*"]
        );
        assert!(index_segments(&["-packetbeat-old".into()]).is_none());
        assert!(index_segments(&["_all".into()]).is_none());
    }

    #[test]
    fn cluster_state_indices_resolve_as_the_settings_read_does() {
        let i = |open, hidden, fin: Option<&str>| StateIndex {
            open,
            hidden,
            pipelines: IndexPipelines {
                default_pipeline: None,
                final_pipeline: fin.map(str::to_string),
            },
        };
        let seen = BTreeMap::from([
            (
                "packetbeat-7.17.0-2026.12.05-000001".to_string(),
                i(true, false, Some("r")),
            ),
            (
                ".ds-packetbeat-8.17.0-2026.12.05-000001".to_string(),
                i(true, true, None),
            ),
            ("packetbeat-closed".to_string(), i(false, false, None)),
            ("packetbeat-hidden".to_string(), i(true, true, None)),
            (
                ".ds-other-2026.12.05-000001".to_string(),
                i(true, true, None),
            ),
        ]);
        let got = resolve_like_settings(&["packetbeat-*".into()], &seen);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            [
                ".ds-packetbeat-8.17.0-2026.12.05-000001",
                "packetbeat-7.17.0-2026.12.05-000001"
            ]
        );
        let got = resolve_like_settings(&["packetbeat-8.17.0".into()], &seen);
        assert_eq!(got.len(), 1);
    }
}
