//! Kibana: the detection-engine rules of the ML-DGA package.
//!
//! - [`client::KibanaClient`]: a thin, spec-conformant client for `GET /api/status` and the
//!   detection-engine rules API, space-aware (`/s/{space}` prefix, omitted for `default`).
//! - [`rules`]: the built-in DGA rule set, `desired_rules` (pure) and `diff` (pure), plus
//!   `apply` to carry out one planned action.

pub mod client;
pub mod rules;

pub use client::{KibanaClient, KibanaStatus};
pub use rules::{RuleAction, RulesInput, desired_rules, diff, owner_tag};

/// The tag every rule of the package carries (the 2020 release's tag; kept for continuity).
pub const DGA_TAG: &str = "ML-DGA";

/// How the operator authenticates to Kibana. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Basic base64(username:password)`.
    Basic { username: String, password: String },
    /// The encoded API key (base64 of `id:key`), sent as `Authorization: ApiKey <value>`.
    ApiKey(String),
    /// A bearer token (service account token), sent as `Authorization: Bearer <token>`.
    Bearer(String),
    /// No `Authorization` header.
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Auth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::None => f.write_str("None"),
        }
    }
}

impl Auth {
    /// Adds the `Authorization` header (if any) to a request.
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
            Auth::ApiKey(key) => {
                match reqwest::header::HeaderValue::from_str(&format!("ApiKey {key}")) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        req.header(reqwest::header::AUTHORIZATION, v)
                    }
                    // Not a valid header value: send none, Kibana answers 401.
                    Err(_) => req,
                }
            }
            Auth::Bearer(token) => req.bearer_auth(token),
            Auth::None => req,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let all = [
            Auth::Basic {
                username: "elastic".into(),
                password: "s3cr3t-pw".into(),
            },
            Auth::ApiKey("s3cr3t-key".into()),
            Auth::Bearer("s3cr3t-token".into()),
            Auth::None,
        ];
        for a in all {
            let s = format!("{a:?} {a:#?}");
            assert!(!s.contains("s3cr3t"), "{s}");
        }
        assert!(
            format!(
                "{:?}",
                Auth::Basic {
                    username: "elastic".into(),
                    password: "x".into()
                }
            )
            .contains("elastic")
        );
    }
}
