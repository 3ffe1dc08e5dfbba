#!/usr/bin/env python3
"""The measuring half of bench/run.sh (which installs wrk, nginx and redis-server, builds the
binaries and raises `ulimit -n` first). Standard library only.

Every server runs on 127.0.0.1, one row at a time, started fresh for its row and stopped after it.
Within a row the servers take turns (A B A B ...), each round one bounded `wrk -t1 -c50` run.
CPU time is utime+stime from /proc/PID/stat (all of a server's processes) before and after each
round, divided by the requests wrk completed; peak RSS is VmHWM (summed over the processes) at the
end of the row. Ratios are medians of the per-pair ratios, absolute figures medians of rounds.

Exit status: 0 when everything ran (targets met or not: this is a benchmark, not a test), 1 when
something is broken (a server did not start, nginx's response does not match zayzoon's, wrk saw
errors or non-2xx responses, the idle-connection client was refused).
"""

import argparse
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
# High enough that the limiter counts every request and never refuses one (SPEC §1: N <= 10^9).
LIMIT = "1000000000/second"
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024


class Broken(Exception):
    """Something that should work did not: the run fails."""


# ---------------------------------------------------------------------------------------------
# Processes


def proc_stat_cpu(pid):
    """utime + stime of `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path="/health", close=False, timeout=5.0):
    """One GET over a fresh socket; returns the raw response bytes (head and body)."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if close:
        req += "Connection: close\r\n"
    req += "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode())
        return read_response(s)


def read_response(sock):
    """Reads one response whose body is delimited by Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise Broken(f"connection closed before a whole head arrived: {buf[:200]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    length = int(m.group(1)) if m else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise Broken("connection closed in the middle of a body")
        body += chunk
    return head + b"\r\n\r\n" + body


def wait_until(what, pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.005)
    raise Broken(f"timed out waiting for {what}")


class Server:
    """A started server: a Popen plus the pids whose CPU and memory count."""

    name = "?"
    proc = None
    port = None

    def pids(self):
        return [self.proc.pid]

    def cpu(self):
        return sum(proc_stat_cpu(p) for p in self.pids())

    def kib(self, key):
        return sum(proc_status_kib(p, key) for p in self.pids())

    def pss_kib(self):
        """Proportional set size: pages shared between processes (nginx's master and workers, or
        libc with the rest of the machine) split among them, so the sum counts them once."""
        total = 0
        for pid in self.pids():
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        return total

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, and SIGKILL after 10 s; returns whether it took SIGKILL."""
        killed = False
        if self.proc is None:
            return killed
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self.proc = None
        return killed


class Zayzoon(Server):
    started = 0

    def __init__(self, binary, workdir, log_name=None, **env):
        self.binary = binary
        Zayzoon.started += 1
        self.log_path = os.path.join(workdir, log_name or f"zayzoon-{Zayzoon.started}.log")
        self.env = {
            "PORT": "0",
            "BIND_ADDR": "127.0.0.1",
            "WORKERS": "1",
            "ACCESS_LOG": "false",
            "RATE_LIMIT_DEFAULT": LIMIT,
            "RATE_LIMIT_ENDPOINT": LIMIT,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        self.env.update({k: str(v) for k, v in env.items()})
        self.name = "zayzoon"

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary], env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        PROCS.append(self)

        def listening():
            if self.proc.poll() is not None:
                raise Broken(f"zayzoon exited with {self.proc.returncode}: {self.log_text()}")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log_text())
            return m and int(m.group(1))

        self.port = wait_until("zayzoon's listening line", listening)
        return self

    def log_text(self, at=0):
        """4 KiB of the log: from the start, or (negative `at`) from the end."""
        with open(self.log_path, "rb") as f:
            if at < 0:
                f.seek(max(0, os.path.getsize(self.log_path) + at))
            return f.read(4096).decode(errors="replace")

    def stop(self):
        killed = super().stop()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        return killed


class Nginx(Server):
    def __init__(self, workdir, body, workers=1, access_log=None, port=None, master_process=True,
                 worker_connections=10_000):
        self.dir = tempfile.mkdtemp(prefix="nginx.", dir=workdir)
        self.port = port or free_port()
        with open(os.path.join(HERE, "nginx.conf")) as f:
            conf = f.read()
        quoted = body.replace("\\", "\\\\").replace("'", "\\'")
        for key, value in {
            "@DIR@": self.dir,
            "@PORT@": str(self.port),
            "@WORKERS@": str(workers),
            "@WORKER_CONNECTIONS@": str(worker_connections),
            "@ACCESS_LOG@": access_log or "off",
            "@HEALTH_BODY@": quoted,
        }.items():
            conf = conf.replace(key, value)
        if not master_process:  # one process, for valgrind
            conf = conf.replace("master_process on;", "master_process off;")
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.workers = workers
        self.name = "nginx"

    def start(self):
        self.proc = subprocess.Popen(
            ["nginx", "-p", self.dir, "-c", self.conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        PROCS.append(self)

        def up():
            if self.proc.poll() is not None:
                raise Broken(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            if len(children(self.proc.pid)) < self.workers:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until("nginx to listen", up)
        return self

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        # Should the master need SIGKILL, its workers would live on: end them too.
        workers = children(self.proc.pid) if self.alive() else []
        killed = super().stop()
        for pid in workers if killed else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return killed


class Redis(Server):
    def __init__(self, workdir, certs=None):
        """With `certs` (a directory from make_certs), also a TLS port, `tls_port`; INFO still goes
        through the plain port, so the counters cover both."""
        self.port = free_port()
        self.dir = workdir
        self.name = "redis-server"
        self.tls_args = []
        if certs:
            self.tls_port = free_port()
            self.tls_args = ["--tls-port", str(self.tls_port), "--tls-auth-clients", "no"] + [
                arg for flag, file in (("--tls-cert-file", "server.pem"), ("--tls-key-file", "server.key"),
                                       ("--tls-ca-cert-file", "ca.pem"))
                for arg in (flag, os.path.join(certs, file))]

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"] + self.tls_args,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        PROCS.append(self)
        wait_until("redis-server", lambda: self.info_ok())
        return self

    def info_ok(self):
        try:
            self.info()
            return True
        except OSError:
            if self.proc.poll() is not None:
                raise Broken("redis-server exited")
            return False

    def info(self):
        """INFO stats and commandstats, as {field: value}; command calls as cmd:<name> -> calls."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"INFO everything\r\n")
            buf = b""
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            header, _, rest = buf.partition(b"\r\n")
            length = int(header[1:])
            while len(rest) < length:
                rest += s.recv(65536)
        out = {}
        for line in rest.decode().splitlines():
            m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
            if m:
                out["cmd:" + m.group(1)] = int(m.group(2))
            elif ":" in line:
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def commands(self, info):
        """Commands clients sent (the commands a script runs count in commandstats too)."""
        return sum(v for k, v in info.items() if k.startswith("cmd:") and k not in ("cmd:info",))

    def scripts(self, info):
        return sum(info.get(k, 0) for k in ("cmd:evalsha", "cmd:eval", "cmd:evalsha_ro", "cmd:eval_ro", "cmd:fcall"))

    def reads(self, info):
        return int(info.get("total_reads_processed", 0))


PROCS = []


def make_certs(workdir):
    """A CA and a certificate it signed for 127.0.0.1 (ECDSA P-256, as ElastiCache's are not: theirs
    are RSA; the handshake happens once per connection, not per request), made with openssl in a
    directory of `workdir`. Returns the directory (ca.pem, server.pem, server.key)."""
    d = tempfile.mkdtemp(prefix="certs.", dir=workdir)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2".split()
    for args in (["req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=bench CA"],
                 ["req"] + ec + ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=bench Redis"],
                 ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                  "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]):
        out = subprocess.run(["openssl"] + args, cwd=d, capture_output=True, text=True)
        if out.returncode != 0:
            raise Broken(f"openssl {args[0]}: {out.stderr}")
    return d


def stop_all():
    for p in reversed(PROCS):
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001 - cleanup goes on
            print(f"bench: stopping {p.name}: {e}", file=sys.stderr)
    PROCS.clear()


# ---------------------------------------------------------------------------------------------
# wrk


def parse_duration(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(port, seconds, close=False, connections=50, refusals=False):
    """One bounded wrk run. `refusals`: the row expects 429s (the flood row), not only 2xx."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/health")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise Broken(f"wrk failed ({out.returncode}): {text}")
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    if not m:
        raise Broken(f"no request count in wrk's output: {text}")
    requests = int(m.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors or (non2xx and not refusals) or requests == 0:
        raise Broken(f"wrk saw errors: {text}")
    lat = {p: parse_duration(v) for p, v in re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", text, re.M)}
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": lat["50"],
        "p99": lat["99"],
    }


# ---------------------------------------------------------------------------------------------
# Rows


def measure_round(server, seconds, close, redis=None, refusals=False):
    r_before = redis.info() if redis else None
    redis_cpu0 = redis.cpu() if redis else 0
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = server.cpu(), time.monotonic()
    w = wrk(server.port, seconds, close, refusals=refusals)
    cpu1, t1 = server.cpu(), time.monotonic()
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not server.alive():
        raise Broken(f"{server.name} died during a round")
    w["cpu_us"] = (cpu1 - cpu0) / w["requests"] * 1e6
    # How busy each side was: far below 100% on both means the round waited on the scheduler
    # (other work on the machine), and then req/s says more about the machine than the server.
    w["server_busy"] = (cpu1 - cpu0) / (t1 - t0)
    w["wrk_busy"] = sum(getattr(wrk1, f) - getattr(wrk0, f) for f in ("ru_utime", "ru_stime")) / (t1 - t0)
    if redis:
        r_after = redis.info()
        w["redis_scripts"] = (redis.scripts(r_after) - redis.scripts(r_before)) / w["requests"]
        w["redis_commands"] = (redis.commands(r_after) - redis.commands(r_before)) / w["requests"]
        # Two of the reads are our own INFO calls (one before, one after).
        w["redis_trips"] = max(0, redis.reads(r_after) - redis.reads(r_before) - 2) / w["requests"]
        w["redis_cpu_us"] = (redis.cpu() - redis_cpu0) / w["requests"] * 1e6
    return w


def run_row(title, contenders, args, close=False, redis=None, refusals=False):
    """contenders: [(label, factory)], the first the subject. Returns the row's results.
    `refusals`: the subject answers 429s (the flood row)."""
    print(f"bench: {title}: {' / '.join(label for label, _ in contenders)}", flush=True)
    servers = []
    try:
        for label, factory in contenders:
            servers.append((label, factory().start()))
        if not args.smoke:
            for i, (_, s) in enumerate(servers):
                wrk(s.port, 1, close, refusals=refusals and i == 0)  # warm-up, not counted
        rounds = {label: [] for label, _ in servers}
        for _pair in range(args.pairs):
            for i, (label, s) in enumerate(servers):
                uses_redis = redis if "redis" in label else None
                rounds[label].append(measure_round(s, args.duration, close, uses_redis, refusals and i == 0))
        hwm = {label: s.kib("VmHWM") for label, s in servers}
    finally:
        for _, s in servers:
            s.stop()
    own = {}
    for label, s in servers:
        # zayzoon's own count, logged at exit (warm-up included).
        m = re.search(r"redis: (\d+) checks in (\d+) round trips", s.log_text(-4096) if "redis" in label else "")
        if m:
            own[label] = int(m.group(2)) / max(1, int(m.group(1)))
    return {"title": title, "labels": [label for label, _ in contenders], "rounds": rounds, "hwm": hwm, "own": own}


def median(xs):
    return statistics.median(xs)


def summarize(row):
    """Medians of rounds per contender, and medians of per-pair ratios subject/other."""
    out = {}
    for label, rs in row["rounds"].items():
        s = {k: median([r[k] for r in rs]) for k in rs[0]}
        s["hwm_kib"] = row["hwm"][label]
        out[label] = s
    subject = row["labels"][0]
    ratios = {}
    for other in row["labels"][1:]:
        pairs = list(zip(row["rounds"][subject], row["rounds"][other]))
        ratios[other] = {
            "rps": median([a["rps"] / b["rps"] for a, b in pairs]),
            "cpu_us": median([a["cpu_us"] / b["cpu_us"] for a, b in pairs]),
            "p50": median([a["p50"] / b["p50"] for a, b in pairs]),
            "p99": median([a["p99"] / b["p99"] for a, b in pairs]),
            "hwm_kib": row["hwm"][subject] / max(1, row["hwm"][other]),
        }
    return out, ratios


# ---------------------------------------------------------------------------------------------
# The other measurements


def check_same_response(zz_port, ngx_port):
    """Fetches /health from both servers, keep-alive and close, and compares them with the
    per-request values normalized. Returns lines to print; raises Broken on a mismatch."""
    lines = []

    def normalize(raw):
        head, _, body = raw.partition(b"\r\n\r\n")
        status, *fields = head.decode().split("\r\n")
        headers = []
        for f in fields:
            name, _, value = f.partition(": ")
            if name.lower() == "date":
                value = "<date: %d bytes>" % len(value)
            elif name.lower() in ("ratelimit-remaining", "ratelimit-reset"):
                value = "<number>"
            headers.append((name.lower(), value))
        return status, sorted(headers), len(body), len(raw)

    for close in (False, True):
        z = normalize(http_get(zz_port, close=close))
        n = normalize(http_get(ngx_port, close=close))
        kind = "Connection: close" if close else "keep-alive"
        if z[0] != n[0]:
            raise Broken(f"{kind}: status lines differ: {z[0]!r} vs {n[0]!r}")
        if z[2] != n[2]:
            raise Broken(f"{kind}: body lengths differ: zayzoon {z[2]}, nginx {n[2]}")
        only_z = [h for h in z[1] if h not in n[1]]
        only_n = [h for h in n[1] if h not in z[1]]
        expected_n = [] if close else [("connection", "keep-alive")]
        if only_z or only_n != expected_n:
            raise Broken(f"{kind}: headers differ: only zayzoon {only_z}, only nginx {only_n}")
        extra = " + 'Connection: keep-alive' (24 bytes, nginx always sends it)" if only_n else ""
        lines.append(
            f"{kind}: same status line, {len(z[1])} headers and {z[2]}-byte body; "
            f"response bytes zayzoon {z[3]}, nginx {n[3]}{extra}"
        )
    return lines


def idle_connections(server, count):
    """Opens `count` keep-alive connections, one GET /health on each, holds them idle and returns
    the server's RSS (KiB) meanwhile."""
    socks = []
    try:
        for i in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
                raw = read_response(s)
            except (OSError, Broken) as e:
                raise Broken(f"{server.name}: idle connection {i + 1} of {count} failed: {e}")
            if not raw.startswith(b"HTTP/1.1 200 "):
                raise Broken(f"{server.name}: idle connection {i + 1}: {raw[:60]!r}")
            socks.append(s)
        time.sleep(0.5)
        for s in socks[:: max(1, count // 100)]:  # still open: the server closed none
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    raise Broken(f"{server.name} closed an idle connection")
            except BlockingIOError:
                pass
        return server.kib("VmRSS")
    finally:
        for s in socks:
            s.close()


def exec_to_first_200(argv, env, port, stop_sig=signal.SIGTERM):
    """Seconds from spawning `argv` to the first 200 on /health at `port`."""
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = t0 + 10
        while True:
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise Broken(f"{argv[0]} gave no 200 within 10 s (exit {proc.poll()})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(request)
                    raw = read_response(s)
                if raw.startswith(b"HTTP/1.1 200 "):
                    return time.perf_counter() - t0
            except (ConnectionRefusedError, ConnectionResetError, Broken):
                pass
            time.sleep(0.0002)
    finally:
        proc.send_signal(stop_sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def callgrind_per_request(argv, env, port, seconds, close, stop_sig, workdir):
    """User-space instructions per request, counted by callgrind: the one figure here that other
    work on the machine does not move. Two runs under valgrind: started and asked once (the
    start-up's count), then started and loaded by wrk -t1 -c10 for `seconds`; the difference over
    wrk's requests."""
    counts = []
    for load in (False, True):
        log = os.path.join(workdir, f"callgrind-{port}-{load}.log")
        cmd = ["valgrind", "--tool=callgrind", f"--log-file={log}", "--callgrind-out-file=/dev/null"] + argv
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            def answers():
                if proc.poll() is not None:
                    raise Broken(f"{argv[0]} under valgrind exited with {proc.returncode}")
                try:
                    return http_get(port, close=True).startswith(b"HTTP/1.1 200 ")
                except OSError:
                    return False

            wait_until(f"{argv[0]} under valgrind", answers, timeout=60)
            requests = wrk(port, seconds, close, connections=10)["requests"] if load else 0
        finally:
            proc.send_signal(stop_sig)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    # Valgrind can sit on a signal that came as the program went back to waiting
                    # (seen with nginx, idle in epoll_wait): say it again, and wake the loop.
                    proc.send_signal(stop_sig)
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    except OSError:
                        pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with open(log) as f:
            text = f.read()
        m = re.search(r"Collected : (\d+)", text)
        if not m:
            raise Broken(f"no instruction count from valgrind (exit {proc.returncode}): {text[-1000:]}")
        counts.append((int(m.group(1)), requests))
    (idle, _), (loaded, requests) = counts
    return (loaded - idle) / requests


# ---------------------------------------------------------------------------------------------
# Output


def fmt_lat(seconds):
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


def fmt_mib(kib):
    return f"{kib / 1024:.2f} MiB"


def fmt_x(x):
    return f"{x:.2f}×"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zayzoon", required=True, help="release binary (glibc) for the throughput rows")
    ap.add_argument("--musl", help="stripped static musl binary, for its size")
    ap.add_argument("--zayzoon-tls", help="release binary built with --features tls, for the Redis-over-TLS row")
    ap.add_argument("--musl-tls", help="stripped static musl binary with --features tls (the image's), for its size")
    ap.add_argument("--smoke", action="store_true", help="every row briefly: seconds each")
    ap.add_argument("--pairs", type=int, help="A/B pairs per row (default 7; smoke 1)")
    ap.add_argument("--duration", type=int, help="seconds per round (default 4; smoke 1)")
    ap.add_argument("--idle", type=int, default=10_000, help="idle keep-alive connections")
    ap.add_argument("--starts", type=int, help="starts for exec-to-first-200 (default 20; smoke 5)")
    ap.add_argument("--cg-seconds", type=int, help="seconds of load under callgrind (default 5; smoke 1)")
    args = ap.parse_args()
    args.pairs = args.pairs or (1 if args.smoke else 7)
    args.duration = args.duration or (1 if args.smoke else 4)
    args.starts = args.starts or (5 if args.smoke else 20)
    args.cg_seconds = args.cg_seconds or (1 if args.smoke else 5)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle + 1000
    if hard != resource.RLIM_INFINITY and hard < need:
        raise Broken(f"RLIMIT_NOFILE hard limit {hard} < {need}: cannot hold {args.idle} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need) if hard == resource.RLIM_INFINITY else hard, hard))

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zayzoon-bench.") as work:
        return run(args, work, started)


def run(args, work, started):
    zz_bin = args.zayzoon
    zz = lambda **env: (lambda: Zayzoon(zz_bin, work, **env))  # noqa: E731

    # The page, as zayzoon serves it, becomes nginx's body; then check the two responses match.
    probe = Zayzoon(zz_bin, work).start()
    body = http_get(probe.port).partition(b"\r\n\r\n")[2].decode()
    ngx = lambda **kw: (lambda: Nginx(work, body, **kw))  # noqa: E731
    n = ngx()().start()
    try:
        same = check_same_response(probe.port, n.port)
    finally:
        n.stop()
        probe.stop()
    for line in same:
        print(f"bench: same response: {line}", flush=True)

    rows = []
    rows.append(run_row("keep-alive", [("zayzoon", zz()), ("nginx", ngx())], args))
    rows.append(run_row("connection per request", [("zayzoon", zz()), ("nginx", ngx())], args, close=True))
    zz_log = os.path.join(work, "zayzoon-access.log")
    ngx_log = os.path.join(work, "nginx-access.log")
    rows.append(run_row(
        "access log on (to a file)",
        [("zayzoon", zz(ACCESS_LOG="true", log_name="zayzoon-access.log")),
         ("nginx", ngx(access_log=ngx_log)),
         ("zayzoon, log off", zz())],
        args,
    ))
    for path in (zz_log, ngx_log):
        if os.path.exists(path):
            os.remove(path)
    # Issue 11: what counting costs. A line a second (production: one a minute), so that the
    # metrics thread's own work shows too.
    rows.append(run_row(
        "metrics (EMF) on",
        [("zayzoon, METRICS=emf", zz(METRICS="emf", METRICS_INTERVAL_S=1)), ("zayzoon, metrics off", zz())],
        args,
    ))

    redis = Redis(work).start()
    redis_row = None
    try:
        redis_url = f"redis://127.0.0.1:{redis.port}/"
        redis_note = redis_store_status(zz_bin, work, redis, redis_url)
        if redis_note is None:
            redis_row = run_row(
                "Redis store",
                [("zayzoon redis", zz(REDIS_URL=redis_url)), ("zayzoon memory", zz())],
                args, redis=redis,
            )
            rows.append(redis_row)
            # One client (wrk, from 127.0.0.1) far past its limit: every answer but the first five
            # is a 429 from the refusal cache, beside 200s from the in-memory store (issue 12).
            rows.append(run_row(
                "flood: one client past its limit",
                [("zayzoon flood, redis", zz(REDIS_URL=redis_url, RATE_LIMIT_DEFAULT="5/minute")),
                 ("zayzoon memory", zz())],
                args, redis=redis, refusals=True,
            ))
    finally:
        redis.stop()
    tls_note = None
    if args.zayzoon_tls:
        certs = make_certs(work)
        ca = os.path.join(certs, "ca.pem")
        redis_tls = Redis(work, certs=certs).start()
        try:
            zz_tls = lambda **env: (lambda: Zayzoon(args.zayzoon_tls, work, **env))  # noqa: E731
            tls_url, plain_url = f"rediss://127.0.0.1:{redis_tls.tls_port}/", f"redis://127.0.0.1:{redis_tls.port}/"
            tls_note = redis_store_status(args.zayzoon_tls, work, redis_tls, tls_url, REDIS_CA_FILE=ca)
            if tls_note is None:
                # One binary (the tls build) and one redis-server: the ratio is what TLS costs.
                rows.append(run_row(
                    "Redis store over TLS",
                    [("zayzoon TLS redis", zz_tls(REDIS_URL=tls_url, REDIS_CA_FILE=ca)),
                     ("zayzoon plain redis", zz_tls(REDIS_URL=plain_url))],
                    args, redis=redis_tls,
                ))
        finally:
            redis_tls.stop()
    rows.append(run_row("WORKERS=2", [("zayzoon", zz(WORKERS=2)), ("nginx", ngx(workers=2))], args))

    # Memory at rest, under one keep-alive round, and with many idle connections; and the time
    # from exec to the first 200. For the shipped static musl binary too: it has no shared libc
    # pages in its RSS (and its own, slower, malloc).
    binaries = [("zayzoon", zz_bin)] + ([("zayzoon musl", args.musl)] if args.musl else [])
    print(f"bench: idle RSS, one keep-alive round, RSS with {args.idle} idle keep-alive connections", flush=True)
    extra = {}
    cap = args.idle + 1000
    factories = [(label, lambda b=b: Zayzoon(b, work, MAX_CONNECTIONS=cap)) for label, b in binaries]
    for label, factory in factories + [("nginx", ngx(worker_connections=cap))]:
        s = factory().start()
        try:
            time.sleep(0.2)
            m = {"idle": s.kib("VmRSS"), "idle_pss": s.pss_kib()}
            r = measure_round(s, args.duration, close=False)
            m.update(load_hwm=s.kib("VmHWM"), load_cpu=r["cpu_us"], load_rps=r["rps"])
            m["conns"] = idle_connections(s, args.idle)
            extra[label] = m
        finally:
            s.stop()

    print(f"bench: exec to first 200, median of {args.starts} starts", flush=True)
    for label, b in binaries + [("nginx", None)]:
        times = []
        for _ in range(args.starts):
            port = free_port()
            if b:
                env = dict(Zayzoon(b, work).env, PORT=str(port))
                times.append(exec_to_first_200([b], env, port))
            else:
                cfg = Nginx(work, body, port=port)
                argv = ["nginx", "-p", cfg.dir, "-c", cfg.conf]
                times.append(exec_to_first_200(argv, dict(os.environ), port))
        extra[label]["start"] = median(times)

    print(f"bench: user-space instructions per request under callgrind (wrk -c10, {args.cg_seconds} s)", flush=True)
    instr = {}
    for close in (False, True):
        kind = "close" if close else "keep-alive"
        port = free_port()
        env = dict(Zayzoon(zz_bin, work).env, PORT=str(port))
        instr[("zayzoon", kind)] = callgrind_per_request([zz_bin], env, port, args.cg_seconds, close,
                                                         signal.SIGTERM, work)
        cfg = Nginx(work, body, port=free_port(), master_process=False)
        argv = ["nginx", "-p", cfg.dir, "-c", cfg.conf]
        # SIGTERM (fast shutdown): under valgrind, nginx sometimes never finished a graceful one.
        instr[("nginx", kind)] = callgrind_per_request(argv, dict(os.environ), cfg.port, args.cg_seconds, close,
                                                       signal.SIGTERM, work)
    port = free_port()
    env = dict(Zayzoon(zz_bin, work).env, PORT=str(port), METRICS="emf", METRICS_INTERVAL_S="1")
    instr[("zayzoon, METRICS=emf", "keep-alive")] = callgrind_per_request([zz_bin], env, port, args.cg_seconds,
                                                                         False, signal.SIGTERM, work)
    extra["instructions"] = instr

    sizes = {"zayzoon musl": os.path.getsize(args.musl) if args.musl else None,
             "zayzoon musl tls": os.path.getsize(args.musl_tls) if args.musl_tls else None}
    nginx_path = subprocess.run(["sh", "-c", "command -v nginx"], capture_output=True, text=True).stdout.strip()
    sizes["nginx"] = os.path.getsize(os.path.realpath(nginx_path))

    report(args, rows, same, redis_note, extra, sizes, time.monotonic() - started, tls_note)
    return 0


def redis_store_status(zz_bin, work, redis, url, **env):
    """None when zayzoon uses Redis for REDIS_URL; else why the row is n/a."""
    s = Zayzoon(zz_bin, work, log_name="zayzoon-redis-probe.log", REDIS_URL=url, REDIS_CONNECT_RETRIES=1, **env)
    try:
        s.start()
    except Broken as e:
        return f"n/a (Redis store not built: zayzoon refused REDIS_URL: {e})"
    try:
        before = redis.commands(redis.info())
        for _ in range(3):
            http_get(s.port)
        if redis.commands(redis.info()) - before <= 0:
            return "n/a (Redis store not built: REDIS_URL accepted, but Redis saw no command)"
        return None
    finally:
        s.stop()


def report(args, rows, same, redis_note, extra, sizes, elapsed, tls_note=None):
    mode = "smoke" if args.smoke else "full"
    print()
    print(f"## zayzoon vs nginx on loopback ({mode}: {args.pairs} A/B pairs x {args.duration} s per row, "
          f"wrk -t1 -c50, medians)")
    print()
    print("| row | server | req/s | p50 | p99 | CPU/req | peak RSS | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    summaries = {}
    for row in rows:
        meds, ratios = summarize(row)
        summaries[row["title"]] = (meds, ratios)
        for i, label in enumerate(row["labels"]):
            m = meds[label]
            note = f"busy: server {m['server_busy']:.0%}, wrk {m['wrk_busy']:.0%}"
            if "redis_trips" in m:
                note += (f"; Redis: {m['redis_trips']:.3f} round trips/req (INFO total_reads_processed), "
                        f"{m['redis_scripts']:.4f} scripts/req, {m['redis_commands']:.4f} commands/req (commandstats), "
                        + (f"zayzoon's own count {row['own'][label]:.3f} round trips/check, " if label in row["own"] else "")
                        + f"redis-server {m['redis_cpu_us']:.1f} µs CPU/req")
            print(f"| {row['title'] if i == 0 else ''} | {label} | {m['rps']:,.0f} | {fmt_lat(m['p50'])} | "
                  f"{fmt_lat(m['p99'])} | {m['cpu_us']:.1f} µs | {fmt_mib(m['hwm_kib'])} | {note} |")
        for other, r in ratios.items():
            print(f"| | {row['labels'][0]} / {other} | {fmt_x(r['rps'])} | {fmt_x(r['p50'])} | {fmt_x(r['p99'])} | "
                  f"{fmt_x(r['cpu_us'])} | {fmt_x(r['hwm_kib'])} | |")
    if redis_note:
        print(f"| Redis store | zayzoon redis | {redis_note} | | | | | |")
    if tls_note or not args.zayzoon_tls:
        print(f"| Redis store over TLS | zayzoon TLS redis | {tls_note or 'n/a (no --zayzoon-tls binary)'} | | | | | |")
    print()
    print("Every round, in the order run (CPU/req in µs @ req/s):")
    print()
    for row in rows:
        for label in row["labels"]:
            rounds = " ".join(f"{r['cpu_us']:.1f}@{r['rps'] / 1000:.0f}k" for r in row["rounds"][label])
            print(f"- {row['title']}, {label}: {rounds}")
    labels = [label for label in ("zayzoon", "zayzoon musl", "nginx") if label in extra]
    names = {"zayzoon": "zayzoon (glibc, as in the rows above)", "zayzoon musl": "zayzoon (static musl, as shipped)"}
    print()
    print("| measure | " + " | ".join(names.get(label, label) for label in labels) + " |")
    print("|---|" + "---:|" * len(labels))

    def line(what, fmt, key):
        print(f"| {what} | " + " | ".join(fmt(extra[label][key]) for label in labels) + " |")

    line("idle RSS after start", fmt_mib, "idle")
    line("idle PSS after start (shared pages split)", fmt_mib, "idle_pss")
    line(f"peak RSS after one keep-alive round (wrk -c50, {args.duration} s)", fmt_mib, "load_hwm")
    line("CPU/req in that round", lambda v: f"{v:.1f} µs", "load_cpu")
    line("req/s in that round", lambda v: f"{v:,.0f}", "load_rps")
    line(f"RSS with {args.idle:,} idle keep-alive connections", fmt_mib, "conns")
    line(f"exec to first 200 on /health (median of {args.starts})", lambda v: f"{v * 1e3:.1f} ms", "start")
    sizes_text = {
        "zayzoon": "(dynamic)",
        "zayzoon musl": f"{sizes['zayzoon musl'] / 1024:.0f} KiB stripped" if sizes["zayzoon musl"] else "n/a",
        "nginx": f"{sizes['nginx'] / 1024:.0f} KiB + libc, pcre2, ssl, zlib",
    }
    print("| binary size | " + " | ".join(sizes_text[label] for label in labels) + " |")
    if sizes["zayzoon musl tls"]:
        cells = {"zayzoon": "", "zayzoon musl": f"{sizes['zayzoon musl tls'] / 1024:.0f} KiB stripped", "nginx": ""}
        print("| binary size with --features tls (the image's build) | "
              + " | ".join(cells[label] for label in labels) + " |")
    instr = extra["instructions"]
    for kind in ("keep-alive", "close"):
        z, n = instr[("zayzoon", kind)], instr[("nginx", kind)]
        cells = {"zayzoon": f"{z:,.0f} ({z / n:.2f}× nginx)", "zayzoon musl": "", "nginx": f"{n:,.0f}"}
        what = "Connection: close" if kind == "close" else kind
        print(f"| user-space instructions per {what} request (callgrind) | "
              + " | ".join(cells[label] for label in labels) + " |")
    z, m = instr[("zayzoon", "keep-alive")], instr[("zayzoon, METRICS=emf", "keep-alive")]
    print(f"| user-space instructions per keep-alive request, METRICS=emf (callgrind) | "
          + " | ".join({"zayzoon": f"{m:,.0f} ({m / z:.3f}× metrics off)"}.get(label, "") for label in labels) + " |")
    print()
    print("Responses compared before measuring (Date, RateLimit-Remaining/-Reset values normalized):")
    for line in same:
        print(f"- {line}")

    # Targets (issue 6). Missed targets are reported, never fatal.
    print()
    print("| target | measured | |")
    print("|---|---|---|")

    def target(name, measured, ok):
        print(f"| {name} | {measured} | {'met' if ok else 'MISSED'} |")

    for title in ("keep-alive", "connection per request"):
        meds, ratios = summaries[title]
        r = ratios["nginx"]
        target(f"{title}: CPU/req ≤ 0.9× nginx", f"{fmt_x(r['cpu_us'])} ({meds['zayzoon']['cpu_us']:.1f} vs "
               f"{meds['nginx']['cpu_us']:.1f} µs)", r["cpu_us"] <= 0.9)
        target(f"{title}: req/s ≥ nginx", f"{fmt_x(r['rps'])}", r["rps"] >= 1.0)
    meds, ratios = summaries["access log on (to a file)"]
    r = ratios["zayzoon, log off"]
    target("ACCESS_LOG=true: CPU/req ≤ 1.5× log off", f"{fmt_x(r['cpu_us'])} ({meds['zayzoon']['cpu_us']:.1f} vs "
           f"{meds['zayzoon, log off']['cpu_us']:.1f} µs)", r["cpu_us"] <= 1.5)
    if "Redis store" in summaries:
        meds, ratios = summaries["Redis store"]
        r = ratios["zayzoon memory"]
        target("Redis store: req/s ≥ 0.7× in-memory", fmt_x(r["rps"]), r["rps"] >= 0.7)
        trips = meds["zayzoon redis"]["redis_trips"]
        target("Redis store: < 0.2 round trips/req at 50 connections", f"{trips:.3f}", trips < 0.2)
        meds, ratios = summaries["flood: one client past its limit"]
        r = ratios["zayzoon memory"]
        commands = meds["zayzoon flood, redis"]["redis_commands"]
        target("flood: ≤ 0.01 Redis commands per refused request", f"{commands:.4f}", commands <= 0.01)
        target("flood: 429s at least as fast as in-memory 200s (req/s)", fmt_x(r["rps"]), r["rps"] >= 1.0)
        target("flood: CPU per 429 ≤ CPU per in-memory 200", fmt_x(r["cpu_us"]), r["cpu_us"] <= 1.0)
    else:
        target("Redis store targets", redis_note, False)
    meds, ratios = summaries["metrics (EMF) on"]
    r = ratios["zayzoon, metrics off"]
    print(f"| METRICS=emf: CPU/req against metrics off (issue 11; no target) | {fmt_x(r['cpu_us'])} "
          f"({meds['zayzoon, METRICS=emf']['cpu_us']:.2f} vs {meds['zayzoon, metrics off']['cpu_us']:.2f} µs) | |")
    hwm = summaries["keep-alive"][0]["zayzoon"]["hwm_kib"]
    shipped = "zayzoon musl" if "zayzoon musl" in extra else "zayzoon"
    z, g = extra[shipped], extra["zayzoon"]

    def both(key, fmt):
        return fmt(z[key]) + (f" (glibc build: {fmt(g[key])})" if shipped != "zayzoon" else "")

    target("idle RSS ≤ 2 MiB", both("idle", fmt_mib), z["idle"] <= 2 * 1024)
    target("peak RSS in the keep-alive run ≤ 4 MiB", f"{fmt_mib(hwm)} (glibc build, keep-alive row)", hwm <= 4 * 1024)
    target(f"{args.idle:,} idle connections ≤ 40 MiB", both("conns", fmt_mib), z["conns"] <= 40 * 1024)
    if sizes["zayzoon musl"]:
        size = sizes["zayzoon musl"]
        target("stripped static musl binary ≤ 1 MiB", f"{size / 1024:.0f} KiB", size <= MIB)
    else:
        target("stripped static musl binary ≤ 1 MiB", "n/a (musl target not installed)", False)
    target("exec to first 200 ≤ 10 ms", both("start", lambda v: f"{v * 1e3:.1f} ms"), z["start"] <= 0.010)
    print()
    print(f"bench: done in {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except Broken as e:
        print(f"bench: BROKEN: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        stop_all()
