//! Test support: start the real binary on 127.0.0.1:0, read the bound address from its first log
//! line, talk raw bytes over real sockets, wait with timeouts (never fixed sleeps where an event
//! can be waited for).
//!
//! Shared by every integration test crate (`#[path = "../support/mod.rs"] mod support;`).

#![allow(dead_code)]

pub mod json;
pub mod redis;
pub mod requests;

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_zayzoon");

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running zayzoon process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    lines: Receiver<String>,
    /// Every stdout line so far (the log), including ones already taken from `lines`.
    log: Arc<Mutex<Vec<String>>>,
}

/// The environment every test server starts with; a test's own variables override these.
const BASE_ENV: &[(&str, &str)] = &[("PORT", "0"), ("BIND_ADDR", "127.0.0.1"), ("WORKERS", "2")];

impl Server {
    /// Starts the server with `env` on top of `BASE_ENV`, and waits for its "listening" line.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::start_with(env, |_| {})
    }

    /// Like `start`, letting the caller adjust the command (e.g. wrap it in `prlimit`).
    pub fn start_with(env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in BASE_ENV.iter().chain(env) {
            cmd.env(k, v);
        }
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("start zayzoon");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn io::Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let tx = tx.clone();
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                // Lossy: a line that is not UTF-8 must not end the log. Tests that care (the JSON
                // lines) check that every byte they read is printable ASCII.
                for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut server = Server { child, addr: "0.0.0.0:0".parse().unwrap(), lines, log };
        let line = server.wait_for_line("listening on ").unwrap_or_else(|| {
            let status = server.child.try_wait();
            panic!("no listening line; exit {status:?}; log:\n{}", server.log_text())
        });
        let addr = line.split("listening on ").nth(1).unwrap().split([';', ' ']).next().unwrap();
        server.addr = addr.parse().expect("address in the listening line");
        server
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str) -> Option<String> {
        self.wait_for_line_within(needle, PATIENCE)
    }

    pub fn wait_for_line_within(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Log lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// A new connection with read/write timeouts of `PATIENCE`.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        s
    }

    /// Sends `raw` on a new connection and reads one response.
    pub fn exchange(&self, raw: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(raw).unwrap();
        read_response(&mut s, raw.starts_with(b"HEAD ")).expect("a response")
    }

    /// `GET path` with a Host, on a new connection.
    pub fn get(&self, path: &str) -> Response {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes())
    }

    /// `GET path` with extra header lines (each without CRLF).
    pub fn get_with(&self, path: &str, headers: &[&str]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.exchange(req.as_bytes())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with kill(1): no unsafe, no libc.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{name}");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads a number from /proc/PID/status (e.g. `VmRSS`, in kB).
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// User + system CPU time of the process so far, from /proc/PID/stat, in clock ticks (1/100 s).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the only field called `name` (case-insensitive); panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} repeated in\n{}", self.head);
        first
    }

    pub fn body_text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

/// Reads one response (head, then `Content-Length` bytes of body unless `head_request`).
pub fn read_response(s: &mut impl io::Read, head_request: bool) -> io::Result<Response> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF after {head:?}")));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("UTF-8 head");
    let mut lines = head.trim_end().split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "status line {status_line:?}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap_or_else(|| panic!("header line {l:?}"));
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let len: usize =
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; if head_request { 0 } else { len }];
    s.read_exact(&mut body)?;
    Ok(Response { status, head, headers, body })
}

/// Reads until EOF (or an error such as a reset); returns what came.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the server closed `s` (EOF or reset) within `PATIENCE`, discarding anything sent.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}
