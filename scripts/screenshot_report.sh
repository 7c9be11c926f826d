#!/usr/bin/env bash
# Screenshot a report as a reader's browser shows it: headless Chromium (Debian: apt-get install
# chromium), a 1280 px wide window, the whole page down to HEIGHT pixels.
#   scripts/screenshot_report.sh runs/demo/report.html /tmp/demo.png [HEIGHT]
set -euo pipefail
report=${1:?usage: $0 REPORT.html OUT.png [HEIGHT]}
out=${2:?usage: $0 REPORT.html OUT.png [HEIGHT]}
height=${3:-6000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no Chromium found: apt-get install chromium (or set PATH)" >&2
  exit 2
fi
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --screenshot="$out" --window-size="1280,$height" "file://$(realpath "$report")" 2>/dev/null
echo "$out"
