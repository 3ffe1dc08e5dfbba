//! zayzoon: a small, auditable HTTP/1.1 status and health server with per-client rate limiting.
//!
//! The request path, one module per box (see README "How it fits together"):
//! `server` (poll loops, accept, signals) → `conn` (one connection's state machine) →
//! `http` (parsing and framing) → `proxy` (client address, scheme) → `limit` (rate limits) →
//! `app` (which response) → `response` (the bytes). `config` reads the environment, `clock`
//! formats time, `logger` writes log lines, `healthcheck` is the container health-check
//! subcommand.
//!
//! The library exists so that integration tests and the cargo-fuzz targets reach the same
//! functions the binary runs. No unsafe code anywhere in this crate.

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]
#![cfg_attr(test, deny(warnings))]

pub mod app;
pub mod clock;
pub mod config;
pub mod conn;
pub mod healthcheck;
pub mod http;
pub mod limit;
pub mod logger;
pub mod proxy;
pub mod response;
pub mod server;
