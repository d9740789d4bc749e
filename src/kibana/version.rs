//! A stack version (`8.17.0`, `9.4.0-SNAPSHOT`) as far as the content choices need it: what a
//! Kibana accepts and which of Elastic's rule and job versions it ships depend on major.minor.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StackVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl StackVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> StackVersion {
        StackVersion {
            major,
            minor,
            patch,
        }
    }

    /// `None` when `s` does not start with `major.minor`.
    pub fn parse(s: &str) -> Option<StackVersion> {
        let core = s.split(['-', '+']).next().unwrap_or("");
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        let major = it.next()??;
        let minor = it.next()??;
        let patch = it.next().flatten().unwrap_or(0);
        Some(StackVersion::new(major, minor, patch))
    }

    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for StackVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Rule fields a Kibana accepts in create/update bodies only from some version on. Before it,
/// Kibana refuses the body (io-ts `exactCheck`, 400 `invalid keys`, until 8.11) or drops the
/// field (zod, 8.12–: kibana PR #170861), so the operator leaves them out. Sources: `setup`
/// kibana PR #178131 (responses carry it from 8.3, PR #132409: they are not the test),
/// `related_integrations` PR #178295, `required_fields` PR #180682, `investigation_fields` PR
/// #163235. The stand-in's table (`tests/standin/src/kibana_fields.rs`) says the same.
pub const BODY_FIELDS_SINCE: [(&str, (u32, u32)); 4] = [
    ("investigation_fields", (8, 10)),
    ("setup", (8, 14)),
    ("related_integrations", (8, 15)),
    ("required_fields", (8, 15)),
];

/// What a Kibana version changes in the rules the operator writes or installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KibanaFeatures {
    pub version: StackVersion,
}

impl KibanaFeatures {
    pub fn new(version: StackVersion) -> KibanaFeatures {
        KibanaFeatures { version }
    }

    /// Rule create/update bodies accept `setup` from 8.14 (kibana PR #178131; responses carry
    /// it from 8.3, PR #132409, but older create schemas refuse it).
    pub fn setup_field(&self) -> bool {
        self.accepts("setup")
    }

    /// Whether rule create/update bodies of this Kibana accept `field` ([`BODY_FIELDS_SINCE`];
    /// fields not listed there are accepted by every supported version).
    pub fn accepts(&self, field: &str) -> bool {
        BODY_FIELDS_SINCE
            .iter()
            .find(|(f, _)| *f == field)
            .is_none_or(|(_, (major, minor))| self.version.at_least(*major, *minor))
    }

    /// Elastic's DGA rules are prebuilt rules (package `security_detection_engine`) from 8.9,
    /// installable one by one through the internal prebuilt-rules API of the same release.
    pub fn prebuilt_rules(&self) -> bool {
        self.version.at_least(8, 9)
    }

    /// Stacks from 9.4 run Elastic's `_ea` variant of the DGA job (detection-rules d8a39869,
    /// Fleet dga 3.0.0 needs Kibana ^9.4.0).
    pub fn ea_job(&self) -> bool {
        self.version.at_least(9, 4)
    }

    /// Elastic added T1071/T1071.004 to the DGA rules' MITRE mapping in the versions shipped
    /// with 8.19 and 9.1+ (detection-rules 8993d145); older packages map T1568 only.
    pub fn t1071_mapping(&self) -> bool {
        (self.version.major == 8 && self.version.at_least(8, 19)) || self.version.at_least(9, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_compare() {
        let v = StackVersion::parse("9.4.0-SNAPSHOT").unwrap();
        assert_eq!(v, StackVersion::new(9, 4, 0));
        assert!(v.at_least(9, 4) && !v.at_least(9, 5));
        assert_eq!(StackVersion::parse("8.13").unwrap().to_string(), "8.13.0");
        assert!(StackVersion::parse("x.1").is_none());
        let f = |s| KibanaFeatures::new(StackVersion::parse(s).unwrap());
        assert!(!f("8.13.4").setup_field() && f("8.14.0").setup_field());
        assert!(!f("8.14.3").accepts("required_fields") && f("8.15.0").accepts("required_fields"));
        assert!(!f("8.9.0").accepts("investigation_fields") && f("7.17.0").accepts("from"));
        assert!(!f("8.8.2").prebuilt_rules() && f("8.9.0").prebuilt_rules());
        assert!(!f("9.3.9").ea_job() && f("9.4.0").ea_job());
        assert!(!f("8.18.0").t1071_mapping() && f("8.19.1").t1071_mapping());
        assert!(!f("9.0.3").t1071_mapping() && f("9.1.0").t1071_mapping());
    }
}
