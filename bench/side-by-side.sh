#!/usr/bin/env bash
# The webhook and ingest functions beside their Python peers (bench/peers/: our own,
# typical, idiomatic Python, run by awslambdaric as Lambda's Python runtime runs it), each
# under the project's Lambda Runtime API harness, against one moto server and the sandbox
# Graph, interleaved round by round. Prints the table BENCHMARKS.md quotes. Not a test and
# not part of CI. Needs python3 with venv, and a network to PyPI the first time.
#   bench/side-by-side.sh [ROUNDS] [INVOKES]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rounds=${1:-5}
invokes=${2:-200}
venv=${BENCH_VENV:-$root/target/bench-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r bench/peers/requirements.txt
if [ ! -x .venv/bin/moto_server ]; then
  python3 -m venv .venv && .venv/bin/pip install -q -r scripts/requirements-test.txt
fi
cargo build --release --bin leadpipe-webhook --bin leadpipe-ingest
cargo build --release -p leadpipe-e2e --example side_by_side

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/moto_server -H 127.0.0.1 -p "$port" > /dev/null 2>&1 &
moto=$!
trap 'kill "$moto" 2>/dev/null || true' EXIT
until curl -fs "http://127.0.0.1:$port/moto-api/" > /dev/null; do sleep 0.2; done

export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing LEADPIPE_MOTO=1 \
  BENCH_PYTHON=$venv/bin/python RUST_LOG=info
target/release/examples/side_by_side target/release/leadpipe-webhook \
  target/release/leadpipe-ingest bench/peers/bootstrap "$rounds" "$invokes"
