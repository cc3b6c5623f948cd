#!/usr/bin/env bash
# Screenshot of a dataset's static browser in headless Chromium, and the check that it shows the boxes.
#
#   tools/browser_screenshot.sh DATASET OUT.png [WIDTHxHEIGHT]
#
# 1. OUT.png: a screenshot of file://DATASET/index.html at the window size (default 1280x960).
# 2. OUT.layout.html: the DOM of index.html#layout at the same size, where the page lists the screen rectangle
#    and colour of every box it drew.
# 3. `instagen views DATASET --check-screenshot OUT.png --layout OUT.layout.html`: the pixels just inside each
#    box edge must have the box's category colour (exit 1 otherwise).
# Chromium: $CHROMIUM, else chromium-headless-shell, chromium, chromium-browser or google-chrome on the PATH.
# The instagen binary: $INSTAGEN, else target/release/instagen, else target/debug/instagen.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 DATASET OUT.png [WIDTHxHEIGHT]" >&2
    exit 2
fi
dataset=$1
out=$2
size=${3:-1280x960}
if ! [[ $size =~ ^([0-9]+)x([0-9]+)$ ]]; then
    echo "$0: window size '$size' is not WIDTHxHEIGHT" >&2
    exit 2
fi
window="${BASH_REMATCH[1]},${BASH_REMATCH[2]}"
if [ ! -f "$dataset/index.html" ]; then
    echo "$0: $dataset/index.html does not exist (write it with: instagen views $dataset)" >&2
    exit 2
fi

chrome=${CHROMIUM:-}
if [ -z "$chrome" ]; then
    for c in chromium-headless-shell chromium chromium-browser google-chrome; do
        if command -v "$c" >/dev/null 2>&1; then chrome=$(command -v "$c"); break; fi
    done
fi
if [ -z "$chrome" ]; then
    cat >&2 <<'MSG'
no headless Chromium found. Install one, e.g. on Debian/Ubuntu:
    sudo apt-get install chromium-headless-shell    # or: sudo apt-get install chromium
or point CHROMIUM at a Chromium / Chrome binary.
MSG
    exit 3
fi

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${INSTAGEN:-}
if [ -z "$bin" ]; then
    for b in "$root/target/release/instagen" "$root/target/debug/instagen"; do
        if [ -x "$b" ]; then bin=$b; break; fi
    done
fi
if [ -z "$bin" ]; then
    echo "$0: no instagen binary (cargo build, or set INSTAGEN)" >&2
    exit 2
fi

url="file://$(cd "$dataset" && pwd)/index.html"
# A private profile, so concurrent runs do not share (or lock) one.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1
       --user-data-dir="$profile" --window-size="$window" --virtual-time-budget=5000)
# chromium writes the screenshot relative to its working directory: give it an absolute path.
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$out_abs"
"$chrome" "${flags[@]}" --screenshot="$out_abs" "$url" >/dev/null 2>"$profile/screenshot.log" || true
if [ ! -s "$out_abs" ]; then
    echo "$0: $chrome wrote no screenshot; its log:" >&2
    cat "$profile/screenshot.log" >&2
    exit 1
fi
"$chrome" "${flags[@]}" --dump-dom "$url#layout" >"${out_abs%.png}.layout.html" 2>"$profile/dump.log" || {
    echo "$0: $chrome --dump-dom failed; its log:" >&2
    cat "$profile/dump.log" >&2
    exit 1
}
echo "screenshot: $out_abs; layout: ${out_abs%.png}.layout.html"
"$bin" views "$dataset" --check-screenshot "$out_abs" --layout "${out_abs%.png}.layout.html"
