#!/usr/bin/env bash
# `token-authority scan` against `grep -rEn` with the same regular expression, on one
# generated tree of source-like text with real secrets planted in it.
#
#   scripts/bench-scan.sh                    # 50 MB in 3,000 files, 5 rounds
#   MB=200 FILES=10000 ROUNDS=7 scripts/bench-scan.sh
#
# The tree is slices of this repository's own sources (so: Rust, protos, Markdown, with
# their snake_case `_`), under 30 folders of 10, and SECRETS real secrets (made by
# `token-authority bootstrap`) at random lines. One untimed run of each warms the page
# cache; then they run alternately, ROUNDS times each: the scanner with its default
# threads, with one, and grep. Prints every time, the medians and the ratios. grep runs with LC_ALL=C, its fastest (byte) mode, which is also what
# the scanner does. grep finds candidates (it cannot check a checksum), the scanner only
# real secrets: both counts are printed, and the scanner must find exactly the planted.
set -euo pipefail
cd "$(dirname "$0")/.."

MB=${MB:-50}
FILES=${FILES:-3000}
ROUNDS=${ROUNDS:-5}
SECRETS=${SECRETS:-20}
# The candidate secret: prefix, `_`, 43 random and 6 checksum base62 characters, with no
# word character either side (src/scan.rs: PATTERN).
PATTERN='\b[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{49}\b'

cargo build --release --bin token-authority
BIN=$PWD/target/release/token-authority

work=$(mktemp -d /tmp/ta-bench-scan.XXXXXX)
trap 'rm -rf "$work"' EXIT

for _ in $(seq "$SECRETS"); do
  "$BIN" bootstrap --data-dir "$work/data" 2>/dev/null
done >"$work/secrets.txt"

python3 - "$work/tree" "$MB" "$FILES" "$work/secrets.txt" <<'EOF'
import os, pathlib, random, sys

root, megabytes, files, secrets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
random.seed(16)
corpus = b"\n".join(
    p.read_bytes()
    for top in ("src", "tests", "proto/tokenauthority", "README.md")
    for p in sorted(pathlib.Path(top).rglob("*") if pathlib.Path(top).is_dir() else [pathlib.Path(top)])
    if p.is_file()
)
average = megabytes * 1_000_000 // files
paths = []
for i in range(files):
    path = os.path.join(root, f"d{i % 30:02}", f"sub{i // 30 % 10}", f"file{i}.rs")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    size = random.randint(average // 2, average * 3 // 2)
    start = random.randrange(0, len(corpus) - size)
    with open(path, "wb") as f:
        f.write(corpus[start : start + size])
    paths.append(path)
for secret in open(secrets).read().split():
    path = random.choice(paths)
    lines = open(path, "rb").read().split(b"\n")
    at = random.randrange(len(lines) + 1)
    lines.insert(at, b'    let token = "' + secret.encode() + b'";')
    open(path, "wb").write(b"\n".join(lines))
EOF

bytes=$(du -sb "$work/tree" | cut -f1)
count=$(find "$work/tree" -type f | wc -l)
echo "tree: $count files, $((bytes / 1000000)) MB, $SECRETS secrets planted"

scan() { "$BIN" scan "$@" "$work/tree" >"$work/scan.out" 2>/dev/null || [ $? = 1 ]; }
grep_it() { LC_ALL=C grep -rEn "$PATTERN" "$work/tree" >"$work/grep.out" || [ $? = 1 ]; }
# Milliseconds that "$@" takes.
timed() {
  local start=$EPOCHREALTIME
  "$@"
  local end=$EPOCHREALTIME
  echo $(((${end/./} - ${start/./}) / 1000))
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

scan
grep_it
found=$(wc -l <"$work/scan.out")
candidates=$(wc -l <"$work/grep.out")
echo "found: scan $found secrets, grep $candidates candidate lines"
if [ "$found" != "$SECRETS" ]; then
  echo "bench-scan: the scanner found $found of $SECRETS planted secrets" >&2
  exit 1
fi

scan_ms=() one_ms=() grep_ms=()
for round in $(seq "$ROUNDS"); do
  scan_ms+=("$(timed scan)")
  one_ms+=("$(timed scan --threads 1)")
  grep_ms+=("$(timed grep_it)")
  echo "round $round: scan ${scan_ms[-1]} ms, scan --threads 1 ${one_ms[-1]} ms, grep ${grep_ms[-1]} ms"
done
scan_median=$(printf '%s\n' "${scan_ms[@]}" | median)
one_median=$(printf '%s\n' "${one_ms[@]}" | median)
grep_median=$(printf '%s\n' "${grep_ms[@]}" | median)
echo "median of $ROUNDS: token-authority scan $scan_median ms (--threads 1: $one_median ms), LC_ALL=C grep -rEn $grep_median ms"
awk -v s="$scan_median" -v o="$one_median" -v g="$grep_median" -v b="$bytes" 'BEGIN {
  s = s < 1 ? 1 : s; o = o < 1 ? 1 : o
  printf "scan: %.0f MB/s (--threads 1: %.0f MB/s); grep takes %.1fx as long as scan (%.1fx as --threads 1)\n",
    b / 1e6 / (s / 1000), b / 1e6 / (o / 1000), g / s, g / o
}'
