//! Kibana: the detection-engine rules of the ML-DGA package.
//!
//! - [`client::KibanaClient`]: a thin, spec-conformant client for `GET /api/status` and the
//!   detection-engine rules API, space-aware (`/s/{space}` prefix, omitted for `default`).
//! - [`prebuilt`]: Elastic's prebuilt DGA rules installed through Kibana's prebuilt-rules API
//!   where Kibana offers them (8.9+); custom rules ([`content`]) elsewhere.
//! - [`rules`]: the built-in DGA rule set, `desired_rules` (pure) and `diff` (pure), plus
//!   `apply` to carry out one planned action.

pub mod client;
pub mod content;
pub mod fleet;
pub mod prebuilt;
pub mod rules;
pub mod version;

pub use client::{KibanaClient, KibanaStatus};
pub use rules::{RuleAction, RulesInput, desired_rules, diff, owner_tag};
pub use version::{KibanaFeatures, StackVersion};

/// The tag every rule of the package carries (the 2020 release's tag; kept for continuity).
pub const DGA_TAG: &str = "ML-DGA";

/// Kibana takes the same credentials as Elasticsearch (`crate::target::Auth`).
pub use crate::target::Auth;
