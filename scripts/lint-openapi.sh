#!/usr/bin/env bash
# Lints docs/openapi.yaml with Redocly CLI's recommended rules (tests/tools/redocly.yaml) and
# fails on any problem, warnings included: client generators read the document, so an
# operation without an operationId or a nullable without a type is a defect.
# The linter is the one pinned in tests/tools/package-lock.json, installed by
# scripts/install-deps.sh (`npm ci`); this script never fetches anything.
#   Usage: lint-openapi.sh [FILE]   (default docs/openapi.yaml)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOC=${1:-$REPO/docs/openapi.yaml}
BIN=$REPO/tests/tools/node_modules/.bin/redocly
if [[ ! -x "$BIN" ]]; then
  echo "lint-openapi: $BIN is missing: run scripts/install-deps.sh" >&2
  exit 1
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# No telemetry, no update check: the run reads the document and nothing else.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
"$BIN" lint --config "$REPO/tests/tools/redocly.yaml" --format=json "$DOC" >"$out" 2>/dev/null || true
python3 - "$out" "$DOC" <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
    totals = report["totals"]
except (OSError, ValueError, KeyError) as e:
    sys.exit(f"lint-openapi: the linter gave no report for {sys.argv[2]} ({e})")
for p in report["problems"]:
    where = p["location"][0]["pointer"] if p.get("location") else "?"
    print(f"{p['severity']}: {p['ruleId']}: {where}: {p['message']}", file=sys.stderr)
n = totals["errors"] + totals["warnings"]
if n:
    sys.exit(f"lint-openapi: {sys.argv[2]}: {totals['errors']} errors, "
             f"{totals['warnings']} warnings (Redocly recommended rules)")
print(f"lint-openapi: {sys.argv[2]} is clean (Redocly {report.get('version', '?')}, "
      "recommended rules)")
PY
