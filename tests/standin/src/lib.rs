//! TEST STAND-IN for Elasticsearch, Kibana and the GitHub releases API.
//!
//! This is not Elasticsearch or Kibana. It is an in-memory imitation used by dga-operator's tests
//! and quickstart, because no package registry ships the real stack. Every request it receives is
//! checked against the official API specifications copied under `spec/` (embedded at build
//! time); requests that are off spec are answered 400 (Kibana: 404 for an unknown path) and
//! counted, so tests can assert the operator sent none. Every response carries the header
//! `X-Standin: dga-standin`.
//!
//! - [`spec`]: what the spec check enforces (Elasticsearch rest-api-spec, Kibana OpenAPI).
//! - [`server::Standin`]: start/stop, state inspection and drift, request log, faults,
//!   interceptor, GitHub releases, admin API.
//! - Elasticsearch semantics live in `es.rs`, Kibana in `kibana.rs`, GitHub in `github.rs`.
//! - Kibana's Fleet package API and ML module setup live in `fleet.rs`; the `dga` package
//!   registry (`--fleet-package dga-VERSION`, served on the GitHub listener) in
//!   [`fleet_package`].
//!
//! Admin API (binary `--admin-port`, or [`Standin::start_admin`]); not spec-checked, not logged:
//! `GET /requests`, `DELETE /requests`, `GET /state`, `POST /faults` with a JSON [`Fault`]
//! (`{"service":"Es","method":"PUT","path_regex":"^/_ml/","nth":2,"times":1,
//! "action":{"Status":{"code":503,"retry_after":5}}}`; other actions: `"CutBody"`, `"Close"`,
//! `{"Delay":{"secs":1,"nanos":0}}`), `DELETE /faults`, `POST /license/{type}`.
//!
//! Known simplifications: `if` conditions in simulated pipelines are only evaluated in the forms
//! `ctx.a.b == 'x'`, `!=`, `== null` joined by `&&`; painless `script` processors and other
//! processors are skipped and listed under `_standin_skipped`; a service set "down" accepts TCP
//! connections and closes them at once (no real connection refusal).

pub mod bundle;
pub mod model;
pub mod profile;

mod es;
mod fleet;
pub mod fleet_package;
mod github;
mod indices;
mod kibana;
mod kibana_fields;
mod prebuilt;
pub mod server;
pub mod spec;
pub mod util;

pub use server::{
    Auth, Fault, FaultAction, Interceptor, RequestRecord, Service, Standin, StandinConfig,
};
