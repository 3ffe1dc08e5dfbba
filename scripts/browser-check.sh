#!/usr/bin/env bash
# Renders /status in Debian's headless Chromium and checks that the page is styled (the page's
# background colour is the stylesheet's, not the browser's white) and that the browser reports no
# Content-Security-Policy violation. A negative control serves the same page under a CSP without
# the style's hash, and must show a violation and an unstyled page, so this check can fail.
# Usage: scripts/browser-check.sh [OUT_DIR]   (installs chromium when missing; leaves status.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/browser-check}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if ! command -v chromium >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
cargo build --release --quiet

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

PORT=0 BIND_ADDR=127.0.0.1 ACCESS_LOG=false target/release/zayzoon >"$out/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$out/server.log" && break; sleep 0.05; done
addr="$(sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$out/server.log" | head -1)"
[ -n "$addr" ] || { echo "server did not start"; cat "$out/server.log"; exit 1; }

# The control: the same bytes zayzoon sent, under a CSP that allows no inline style.
rm -f "$out/control.port"
python3 - "$addr" "$out" <<'PY' &
import http.server, socketserver, sys, urllib.request
addr, out = sys.argv[1], sys.argv[2]
page = urllib.request.urlopen(f"http://{addr}/status").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)
    def log_message(self, *a): pass
with socketserver.TCPServer(("127.0.0.1", 0), H) as s:
    open(f"{out}/control.port", "w").write(str(s.server_address[1]))
    s.serve_forever()
PY
pids+=($!)
for _ in $(seq 100); do [ -s "$out/control.port" ] && break; sleep 0.05; done
control="127.0.0.1:$(cat "$out/control.port")"

shoot() { # URL PNG LOG
    rm -rf "$out/profile"
    timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$out/profile" --enable-logging=stderr --v=0 --window-size=1000,700 \
        --screenshot="$2" "$1" >"$3" 2>&1 || true
    [ -s "$2" ] || { echo "no screenshot of $1"; tail -20 "$3"; exit 1; }
}
shoot "http://$addr/status" "$out/status.png" "$out/status.log"
shoot "http://$control/status" "$out/control.png" "$out/control.log"

# The colour of the top-left pixel of a PNG screenshot (8-bit RGB or RGBA, as Chromium writes).
pixel() {
    python3 - "$1" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
pos, idat, width, bpp = 8, b"", 0, 4
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8]); body = data[pos + 8:pos + 8 + n]; pos += 12 + n
    if kind == b"IHDR":
        width, bpp = struct.unpack(">I", body[:4])[0], {2: 3, 6: 4}[body[9]]
    elif kind == b"IDAT":
        idat += body
row = zlib.decompress(idat)[: 1 + width * bpp]
# Whatever the row filter, the first pixel of the first row is stored as is (its neighbours count as 0).
print("#%02x%02x%02x" % tuple(row[1:4]))
PY
}
csp_errors() { grep -ciE "content security policy|refused to apply" "$1" || true; }

page_bg="$(pixel "$out/status.png")"; control_bg="$(pixel "$out/control.png")"
page_csp="$(csp_errors "$out/status.log")"; control_csp="$(csp_errors "$out/control.log")"
echo "zayzoon /status: background $page_bg, CSP messages $page_csp   (screenshot: $out/status.png)"
echo "control (no hash): background $control_bg, CSP messages $control_csp"
[ "$control_csp" -gt 0 ] || { echo "FAIL: the control shows no CSP violation: this check cannot see them"; exit 1; }
[ "$control_bg" != "#0f172a" ] || { echo "FAIL: the control is styled: this check cannot tell"; exit 1; }
[ "$page_csp" -eq 0 ] || { echo "FAIL: CSP violation on /status"; grep -iE "content security|refused" "$out/status.log"; exit 1; }
[ "$page_bg" = "#0f172a" ] || { echo "FAIL: /status is not styled (background $page_bg)"; exit 1; }
echo "browser check passed"
