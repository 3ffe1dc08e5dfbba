//! Integration tests: the real binary on 127.0.0.1:0, raw bytes over real sockets.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod framing;
mod lifecycle;
mod limits;
mod observability;
mod redirects;
mod redis_store;
mod redis_tls;
mod routes;
mod timeouts;
