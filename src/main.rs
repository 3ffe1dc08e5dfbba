//! The `zayzoon` binary: the command line, the logger and exit codes (0 clean, 1 runtime or
//! startup failure, 2 bad configuration or usage). Everything else lives in the library.

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]

use std::process::ExitCode;

use zayzoon::limit::remote;
use zayzoon::{config, healthcheck, logger, server};

const USAGE: &str = "\
usage: zayzoon [serve]            serve HTTP, configured by the environment variables below
       zayzoon healthcheck [URL]  GET URL (default http://127.0.0.1:$PORT/health); exit 0 on 200 within 2 s
       zayzoon --help | --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => serve(),
        ["healthcheck"] => healthcheck(&healthcheck::default_url(std::env::var("PORT").ok().as_deref())),
        ["healthcheck", url] => healthcheck(url),
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}\n\nenvironment (unset or empty: the default):\n{}", config::help_table());
            ExitCode::SUCCESS
        }
        ["--version" | "-V"] => {
            // Whether `rediss://` works is a property of the build (SPEC §1): say it.
            let tls = if remote::TLS { "tls" } else { "no tls" };
            println!("zayzoon {} ({tls})", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    // rustls needs one process-wide crypto provider, and the redis crate chooses none. rustls
    // would take ring by itself only while ring is the one provider compiled in (a dependency
    // that turned on aws-lc-rs too would make every connection panic), so it is chosen here, once,
    // before anything connects. Why ring: the `tls` feature in Cargo.toml. Installing fails only
    // when a provider is installed already, which nothing before this line does.
    #[cfg(feature = "tls")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zayzoon: {e}");
            return ExitCode::from(2);
        }
    };
    // Two targets bypass LOG_LEVEL: "access" follows ACCESS_LOG, and "lifecycle" (the startup line
    // with the effective configuration, signals, drain) is always shown, whatever the level.
    if let Err(e) = logger::Logger::new(config.log).install() {
        eprintln!("zayzoon: cannot start logging: {e}");
        return ExitCode::from(1);
    }
    match server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn healthcheck(url: &str) -> ExitCode {
    match healthcheck::check(url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zayzoon healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}
