//! One error type for the engine. Each variant has a stable `reason()`: it is the condition
//! reason, the Warning event's reason and the metric label.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    #[error("{0}")]
    SecretNotFound(String),

    #[error("{0}")]
    SecretInvalid(String),

    /// A reference into another namespace that the DgaModel's identity may not follow.
    #[error("{0}")]
    ReferenceNotAllowed(String),

    /// ECK has not yet created what the connection needs (a CA, a Secret, a Service).
    #[error("{0}")]
    WaitingForEck(String),

    #[error("release {tag} not found: {detail}")]
    ReleaseNotFound { tag: String, detail: String },

    #[error("invalid release: {0}")]
    InvalidRelease(String),

    #[error("invalid bundle: {0}")]
    InvalidBundle(#[from] crate::bundle::BundleError),

    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),

    #[error("{service} unreachable: {detail}")]
    Unreachable { service: Service, detail: String },

    #[error("{service} rejected the credentials ({status}): {detail}")]
    Unauthorized {
        service: Service,
        status: u16,
        detail: String,
    },

    #[error("{service} {version} is not supported: {detail}")]
    VersionUnsupported {
        service: Service,
        version: String,
        detail: String,
    },

    #[error(
        "Elasticsearch licence `{0}` does not include machine learning inference (needs platinum, enterprise or trial)"
    )]
    LicenseInsufficient(String),

    #[error("conflict: {0}")]
    Conflict(String),

    /// Kibana cannot get the Fleet package version asked for (no registry it can reach has it).
    #[error("{0}")]
    PackageUnavailable(String),

    /// The Fleet package version asked for does not fit this stack (its Kibana constraint).
    #[error("{0}")]
    PackageIncompatible(String),

    /// Kibana does not install uploaded packages on this stack (its version and licence).
    #[error("{0}")]
    UploadNotAllowed(String),

    /// An object Elasticsearch's file-based settings own (ECK's StackConfigPolicy): no request,
    /// `overwrite` included, may change it. Reported as a Conflict.
    #[error("conflict: {0}")]
    ReservedState(String),

    /// A request that may succeed later (429, 5xx, timeouts, a connection cut).
    #[error("{service} {what}: {detail}")]
    Transient {
        service: Service,
        what: String,
        detail: String,
        retry_after: Option<Duration>,
        cause: Transience,
    },

    /// The service refused a request in a way retrying will not fix.
    #[error("{service} {what}: {detail}{}", http_status(*status))]
    Rejected {
        service: Service,
        what: String,
        status: u16,
        detail: String,
    },

    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),

    #[error("internal error: {0}")]
    Internal(String),
}

/// What made an error transient: the CLI tells a busy service from a silent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transience {
    /// An answer with this status: 429 or 5xx.
    Status(u16),
    /// No answer within the request timeout.
    TimedOut,
    /// The connection dropped, or the body was cut short.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Elasticsearch,
    Kibana,
    Releases,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Elasticsearch => "Elasticsearch",
            Service::Kibana => "Kibana",
            Service::Releases => "release download",
        })
    }
}

impl Error {
    /// Stable CamelCase label: condition reason, event reason, metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::SecretNotFound(_) => "SecretNotFound",
            Error::SecretInvalid(_) => "SecretInvalid",
            Error::ReferenceNotAllowed(_) => "ReferenceNotAllowed",
            Error::WaitingForEck(_) => "WaitingForECK",
            Error::ReleaseNotFound { .. } => "ReleaseNotFound",
            Error::InvalidRelease(_) => "InvalidRelease",
            Error::InvalidBundle(_) => "InvalidBundle",
            Error::ChecksumMismatch(_) => "ChecksumMismatch",
            Error::Unreachable { .. } => "Unreachable",
            Error::Unauthorized { .. } => "Unauthorized",
            Error::VersionUnsupported { .. } => "VersionUnsupported",
            Error::LicenseInsufficient(_) => "LicenseInsufficient",
            Error::Conflict(_) | Error::ReservedState(_) => "Conflict",
            Error::PackageUnavailable(_) => "PackageUnavailable",
            Error::PackageIncompatible(_) => "PackageIncompatible",
            Error::UploadNotAllowed(_) => "UploadNotAllowed",
            Error::Transient { .. } => "TransientError",
            Error::Rejected { .. } => "RequestRejected",
            Error::Kube(_) => "KubernetesError",
            Error::Internal(_) => "InternalError",
        }
    }

    /// Transient errors retry soon with backoff; the others need a change (spec, Secret,
    /// cluster) and are retried only at a slow pace. A missing Secret or ECK object needs a
    /// person too: the operator watches them, so it sees the fix at once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Transient { .. }
                | Error::Kube(_)
                | Error::WaitingForEck(_)
        )
    }

    /// Errors that need a human: kstatus `Stalled`.
    pub fn is_stalled(&self) -> bool {
        !self.is_transient()
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Why a transient error is transient (`None` for the other kinds).
    pub fn transience(&self) -> Option<Transience> {
        match self {
            Error::Transient { cause, .. } => Some(*cause),
            _ => None,
        }
    }

    pub fn service(&self) -> Option<Service> {
        match self {
            Error::Unreachable { service, .. }
            | Error::Unauthorized { service, .. }
            | Error::VersionUnsupported { service, .. }
            | Error::Transient { service, .. }
            | Error::Rejected { service, .. } => Some(*service),
            Error::LicenseInsufficient(_) | Error::Conflict(_) | Error::ReservedState(_) => {
                Some(Service::Elasticsearch)
            }
            Error::PackageUnavailable(_)
            | Error::PackageIncompatible(_)
            | Error::UploadNotAllowed(_) => Some(Service::Kibana),
            _ => None,
        }
    }
}

/// ` (HTTP 404)`, or nothing when no status applies (0).
/// kube's own Display of an API error appends the whole `Status` in Debug form; conditions,
/// events and CLI errors say what the apiserver said, once.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                "Error"
            } else {
                s.reason.as_str()
            };
            format!("{reason} (HTTP {}): {}", s.code, s.message)
        }
        other => other.to_string(),
    }
}

fn http_status(status: u16) -> String {
    if status == 0 {
        String::new()
    } else {
        format!(" (HTTP {status})")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubernetes_api_error_is_said_once_without_debug_dumps() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "secrets \"es\" is forbidden: User \"system:serviceaccount:x:y\" cannot get resource \"secrets\""
        }))
        .unwrap();
        let e = Error::Kube(kube::Error::Api(Box::new(status)));
        assert_eq!(
            e.to_string(),
            "Kubernetes API: Forbidden (HTTP 403): secrets \"es\" is forbidden: User \"system:serviceaccount:x:y\" cannot get resource \"secrets\""
        );
    }
}
