//! dga-operator: installs Elastic's ML-DGA detection package into Elasticsearch and Kibana and
//! keeps it there. One engine behind three front doors: the controller, the one-shot CLI and
//! Plan mode.

pub mod api;
pub mod backoff;
pub mod bundle;
pub mod cli;
pub mod controller;
pub mod elasticsearch;
pub mod engine;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod http;
pub mod kibana;
pub mod leader;
pub mod metrics;
pub mod protection;
pub mod server;
pub mod status;
pub mod target;
pub mod watches;
