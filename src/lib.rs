//! zayzoon: a small, auditable HTTP/1.1 status and health server with per-client rate limiting.
//!
//! The request path, one module per box (see README "How it fits together"):
//! `server` (poll loops, accept, signals) → `conn` (one connection's state machine) →
//! `http` (parsing and framing) → `proxy` (client address, scheme) → `limit` (rate limits) →
//! `app` (which response) → `response` (the bytes). `config` reads the environment into each
//! module's settings; `limits` names every fixed limit; `route` lists the pages; `clock` formats
//! time; `decimal` reads and writes numbers; `logger` writes log lines (text or JSON); `metrics`
//! counts responses and writes the CloudWatch EMF lines; `healthcheck` is the container
//! health-check subcommand.
//!
//! The library exists so that integration tests and the cargo-fuzz targets reach the same
//! functions the binary runs. No unsafe code anywhere in this crate.

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]
#![cfg_attr(test, deny(warnings))]

// The session harness that unit tests share with the fuzz crate (src/conn/tests/harness.rs) names
// this crate `zayzoon::`, as the fuzz crate must.
#[cfg(test)]
extern crate self as zayzoon;

pub mod app;
pub mod clock;
pub mod config;
pub mod conn;
pub mod decimal;
pub mod healthcheck;
pub mod http;
pub mod limit;
pub mod limits;
pub mod logger;
pub mod metrics;
pub mod proxy;
pub mod response;
pub mod route;
pub mod server;
