#!/usr/bin/env bash
# Peak RSS of `leadpipe export` at N leads: memory must stay flat as N grows.
# Usage: bench/export-rss.sh 10000 100000   (builds the release binary; needs /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin leadpipe >/dev/null
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for n in "${@:-10000 100000}"; do
  db="$dir/leads-$n.db"
  target/release/leadpipe demo --leads "$n" --quiet --db "$db" >/dev/null
  for format in csv jsonl; do
    /usr/bin/time -f "$n leads, $format: %e s, peak RSS %M KB" \
      target/release/leadpipe export --db "$db" --format "$format" --out "$dir/out.$format" 2>&1 | tail -1
    echo "  output $(du -h "$dir/out.$format" | cut -f1)"
  done
done
