#!/usr/bin/env bash
# The console's third-party files (src/stockroom/console/vendor/), fetched with `npm pack`
# for the pinned versions below into a temporary folder: the files the console uses and
# their licences are copied, and VENDOR.md is rewritten with each file's package, version,
# licence and sha256 and each tarball's integrity. The only thing in the project that needs
# npm (`make vendor`); installing, running and testing Stockroom need no Node.js.
#
#   scripts/vendor-console.sh           refresh the files and VENDOR.md
#   scripts/vendor-console.sh --check   fail if the files differ from what npm gives
set -euo pipefail

# The pins. To upgrade: change a version, run `make vendor`, read the diff, run the tests.
HTM=3.1.1       # htm's preact/standalone.module.js: htm + Preact + hooks in one ES module
PREACT=10.29.6  # its licence (the standalone build bundles a Preact of htm's own build)
UPLOT=1.6.32    # uPlot's ES module and style sheet (the item page's chart)

root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/src/stockroom/console/vendor"
check=false
[[ "${1:-}" == "--check" ]] && check=true

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent --json "htm@$HTM" "preact@$PREACT" "uplot@$UPLOT" >packs.json
for tarball in *.tgz; do
  mkdir "${tarball%.tgz}"
  tar -xzf "$tarball" -C "${tarball%.tgz}"
done

out="$work/out"
mkdir "$out"
# source (in the unpacked tarball) -> name in vendor/
copy() { cp "$work/$1" "$out/$2"; }
copy "htm-$HTM/package/preact/standalone.module.js" preact-htm.js
copy "uplot-$UPLOT/package/dist/uPlot.esm.js" uPlot.esm.js
copy "uplot-$UPLOT/package/dist/uPlot.min.css" uPlot.min.css
copy "htm-$HTM/package/LICENSE" LICENSE.htm.txt
copy "preact-$PREACT/package/LICENSE" LICENSE.preact.txt
copy "uplot-$UPLOT/package/LICENSE" LICENSE.uplot.txt

integrity() { python3 -c 'import json,sys; print(next(p["integrity"] for p in json.load(open("packs.json")) if p["name"] == sys.argv[1]))' "$1"; }
sha() { sha256sum "$out/$1" | cut -d' ' -f1; }

{
  cat <<EOF
# Vendored files of the console

Written by \`scripts/vendor-console.sh\` (\`make vendor\`), which runs \`npm pack\` for the
pinned versions in a temporary folder and copies these files unchanged; do not edit them by
hand. \`make vendor\` refreshes them, \`scripts/vendor-console.sh --check\` verifies them.

| file | package | version | licence | sha256 |
|---|---|---|---|---|
| \`preact-htm.js\` | htm (\`preact/standalone.module.js\`: htm with Preact and its hooks) | $HTM | Apache-2.0 (htm), MIT (Preact) | \`$(sha preact-htm.js)\` |
| \`uPlot.esm.js\` | uplot (\`dist/uPlot.esm.js\`) | $UPLOT | MIT | \`$(sha uPlot.esm.js)\` |
| \`uPlot.min.css\` | uplot (\`dist/uPlot.min.css\`) | $UPLOT | MIT | \`$(sha uPlot.min.css)\` |
| \`LICENSE.htm.txt\` | htm (\`LICENSE\`) | $HTM | | \`$(sha LICENSE.htm.txt)\` |
| \`LICENSE.preact.txt\` | preact (\`LICENSE\`) | $PREACT | | \`$(sha LICENSE.preact.txt)\` |
| \`LICENSE.uplot.txt\` | uplot (\`LICENSE\`) | $UPLOT | | \`$(sha LICENSE.uplot.txt)\` |

\`preact-htm.js\` is htm's own build, which bundles a Preact 10 (and its hooks) into one ES module
with no bare imports (an import map would be an inline script, which the console's
Content-Security-Policy forbids); \`preact@$PREACT\` is packed for the text of Preact's licence.

Tarballs (\`npm pack\`'s integrity):

- htm@$HTM: \`$(integrity htm)\`
- preact@$PREACT: \`$(integrity preact)\`
- uplot@$UPLOT: \`$(integrity uplot)\`
EOF
} >"$out/VENDOR.md"

if $check; then
  diff -r "$out" "$vendor" && echo "vendor/: as npm gives it"
else
  mkdir -p "$vendor"
  cp "$out"/* "$vendor/"
  echo "vendor/ refreshed; review with: git diff -- src/stockroom/console/vendor"
fi
