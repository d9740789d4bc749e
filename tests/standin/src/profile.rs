//! Elasticsearch version profiles: which version-dependent behaviour the stand-in imitates.
//!
//! One table ([`SINCE`]) says from which version each behaviour holds, with the Elastic source
//! that shows it; `tests/standin/CONFORMANCE.md` repeats it with the test per row. A profile is
//! a version number: `--es-version 7.10` (or `StandinConfig::es_version`) picks every behaviour
//! of that version, not only the string `GET /` reports. Named profiles expand to a full
//! version (`7.10` → `7.10.2`); any `X.Y[.Z]` from 7.10 on is accepted.

use std::fmt;

use crate::spec::SpecSet;

/// A behaviour that exists only from some version on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Pipeline bodies accept `_meta` (ES PRs #75905, #76381; 7.15.0). Before, a `_meta` key is
    /// refused with 400 `parse_exception` ("doesn't support one or more provided configuration
    /// parameters [_meta]", `Pipeline.create` → `ConfigurationUtils.newConfigurationException`).
    PipelineMeta,
    /// The `pipeline` processor accepts `ignore_missing_pipeline` (ES PR #87354; 8.3.0). Before,
    /// the unknown option is refused with 400 `parse_exception` (processor factories check that
    /// no configuration key is left over: `ConfigurationUtils.readProcessor`).
    PipelineIgnoreMissingPipeline,
    /// GET `_ingest/pipeline` adds read-only `created_date_millis`/`modified_date_millis` (ES PR
    /// #130847; 9.2.0; elasticsearch-specification `ingest/_types/Pipeline.ts`).
    PipelineDates,
    /// PUT `_ml/trained_models` (`TrainedModelConfig.STRICT_PARSER`, `Builder.validate(true)`):
    /// `model_size_bytes` (with `estimated_heap_memory_usage_bytes` as its deprecated alias) and
    /// `estimated_operations` may be set at creation; the parser knows `model_type` and
    /// `location`, and `location` is refused at creation. Before (7.x), the parser knows neither
    /// `model_type`, `location` nor `model_size_bytes`, and `estimated_heap_memory_usage_bytes`
    /// and `estimated_operations` are "illegal to set ... at inference model creation" (8.0:
    /// `TrainedModelConfig.VERSION_3RD_PARTY_CONFIG_ADDED = V_8_0_0`).
    ModelSizeSettable,
    /// `metadata.model_aliases` is refused at creation (model aliases, 7.13).
    ModelAliases,
    /// The parser knows `model_package`, refused at creation (`TransportVersions.V_8_8_0`).
    ModelPackage,
    /// The parser knows `platform_architecture` (`TransportVersions.V_8_11_X`).
    PlatformArchitecture,
    /// The parser knows `prefix_strings` (`TransportVersions.V_8_12_0`).
    PrefixStrings,
}

/// From which (major, minor) each feature holds. The one place that says it.
pub const SINCE: &[(Feature, (u32, u32), &str)] = &[
    (
        Feature::PipelineMeta,
        (7, 15),
        "elastic/elasticsearch PRs #75905, #76381",
    ),
    (
        Feature::PipelineIgnoreMissingPipeline,
        (8, 3),
        "elastic/elasticsearch PR #87354",
    ),
    (
        Feature::PipelineDates,
        (9, 2),
        "elastic/elasticsearch PR #130847",
    ),
    (
        Feature::ModelSizeSettable,
        (8, 0),
        "TrainedModelConfig.java: MODEL_SIZE_BYTES_WITH_DEPRECATION, VERSION_3RD_PARTY_CONFIG_ADDED = V_8_0_0",
    ),
    (
        Feature::ModelAliases,
        (7, 13),
        "TrainedModelConfig.java: checkIllegalSetting(metadata.model_aliases)",
    ),
    (
        Feature::ModelPackage,
        (8, 8),
        "TrainedModelConfig.java: MODEL_PACKAGE, TransportVersions.V_8_8_0",
    ),
    (
        Feature::PlatformArchitecture,
        (8, 11),
        "TrainedModelConfig.java: PLATFORM_ARCHITECTURE, TransportVersions.V_8_11_X",
    ),
    (
        Feature::PrefixStrings,
        (8, 12),
        "TrainedModelConfig.java: PREFIX_STRINGS, TransportVersions.V_8_12_0",
    ),
];

/// The profiles the test suite runs the operator's core scenario against.
pub const NAMED: &[(&str, &str)] = &[
    ("7.10", "7.10.2"),
    ("7.17", "7.17.29"),
    ("8.17", "8.17.0"),
    ("9.2", "9.2.0"),
];

/// The default profile (`dga-standin` without `--es-version`).
pub const DEFAULT: &str = "8.17.0";

/// The oldest version the stand-in imitates (data streams and composable templates exist from
/// 7.9; the operator supports 7.10 on).
pub const OLDEST: (u32, u32) = (7, 10);

/// A version profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Profile {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Profile {
    /// Parses `X.Y` (a named profile or `.0`) or `X.Y.Z`; refuses versions before 7.10.
    pub fn parse(s: &str) -> Result<Profile, String> {
        let full = NAMED
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
            .unwrap_or(s);
        let nums: Vec<u32> = full
            .split('.')
            .map(|p| p.split('-').next().unwrap_or(p).parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--es-version: `{s}` is not a version like 8.17 or 8.17.0"))?;
        let (major, minor, patch) = match nums[..] {
            [a, b] => (a, b, 0),
            [a, b, c] => (a, b, c),
            _ => return Err(format!("--es-version: `{s}` is not a version like 8.17.0")),
        };
        if (major, minor) < OLDEST {
            return Err(format!(
                "--es-version: {s} is older than {}.{}, the oldest version the stand-in imitates",
                OLDEST.0, OLDEST.1
            ));
        }
        Ok(Profile {
            major,
            minor,
            patch,
        })
    }

    pub fn has(&self, f: Feature) -> bool {
        SINCE
            .iter()
            .find(|(g, _, _)| *g == f)
            .is_some_and(|(_, since, _)| (self.major, self.minor) >= *since)
    }

    /// Which copy of the rest-api-spec requests are checked against.
    pub fn spec_set(&self) -> SpecSet {
        if self.major >= 9 {
            SpecSet::Main2026_02_10
        } else {
            SpecSet::Branch8_19
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_profiles_pick_behaviour() {
        let p = |s| Profile::parse(s).unwrap();
        assert_eq!(p("7.10").to_string(), "7.10.2");
        assert!(!p("7.10").has(Feature::PipelineMeta));
        assert!(p("7.15").has(Feature::PipelineMeta));
        assert!(p("7.17").has(Feature::PipelineMeta));
        assert!(!p("7.17").has(Feature::PipelineIgnoreMissingPipeline));
        assert!(!p("8.2.3").has(Feature::PipelineIgnoreMissingPipeline));
        assert!(p("8.17").has(Feature::PipelineIgnoreMissingPipeline));
        assert!(!p("9.1.5").has(Feature::PipelineDates));
        assert!(p("9.2").has(Feature::PipelineDates));
        assert!(!p("7.17").has(Feature::ModelSizeSettable));
        assert!(p("8.0.0").has(Feature::ModelSizeSettable));
        assert!(!p("8.11").has(Feature::PrefixStrings));
        assert!(p("8.12").has(Feature::PrefixStrings));
        assert_eq!(p("8.17").spec_set(), SpecSet::Branch8_19);
        assert_eq!(p("9.2").spec_set(), SpecSet::Main2026_02_10);
        assert_eq!(p(DEFAULT), p("8.17"));
        assert!(Profile::parse("7.9").is_err());
        assert!(Profile::parse("eight").is_err());
    }
}
