#!/usr/bin/env bash
# Vendor the JavaScript the built book needs so it works with no network:
#   plotly.min.js  (from the installed plotly Python package; one copy shared by every figure)
#   require.min.js + embed-amd.js (ipywidgets' static renderer; myst-nb would load them from CDNs)
#   tex-svg.js     (MathJax 3, single-file SVG output; Sphinx would load it from a CDN)
# Into book/_vendor, which _config.yml lists in html_static_path. Not book/_static: Jupyter Book adds
# every .js there to every page. Being in html_static_path puts them on no page: book/_ext/effx_book.py
# adds plotly.min.js to pages with a figure, Sphinx adds MathJax (kept only on pages with math), myst-nb
# adds the widget renderer to pages with widgets, and files no page uses are deleted from the output.
# Source maps are not vendored; the comments pointing at them are removed.
# Usage: book/vendor_assets.sh PYTHON
set -euo pipefail
PY=${1:-python3}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/_vendor"
mkdir -p "$out"

# Versions: html-manager 1.x is the ipywidgets 8 renderer; MathJax 3 single-file bundle.
REQUIREJS=requirejs@2.3.7
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.14
MATHJAX=mathjax@3.2.2

"$PY" - "$out" <<'PY'
import pathlib, shutil, sys
import plotly
src = pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
dst = pathlib.Path(sys.argv[1]) / "plotly.min.js"
if not dst.exists() or dst.stat().st_size != src.stat().st_size:
    shutil.copyfile(src, dst)
PY

need_npm=0
for f in require.min.js embed-amd.js tex-svg.js; do [ -s "$out/$f" ] || need_npm=1; done
if [ "$need_npm" = 1 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "vendor_assets: npm is needed once to fetch require.js, the ipywidgets renderer and MathJax" >&2
    echo "  (install Node.js/npm, or on Debian: apt-get install npm)" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$REQUIREJS" "$HTML_MANAGER" "$MATHJAX" >/dev/null)
  for t in "$tmp"/*.tgz; do mkdir -p "${t%.tgz}"; tar -xzf "$t" -C "${t%.tgz}"; done
  cp "$tmp"/requirejs-*/package/require.js "$out/require.min.js"
  cp "$tmp"/jupyter-widgets-html-manager-*/package/dist/embed-amd.js "$out/embed-amd.js"
  cp "$tmp"/mathjax-*/package/es5/tex-svg.js "$out/tex-svg.js"
fi
# No .map files ship with the book: drop the trailing "//# sourceMappingURL=..." comments (idempotent).
for f in require.min.js embed-amd.js tex-svg.js; do
  if grep -q '^[[:space:]]*//[#@][[:space:]]*sourceMappingURL=' "$out/$f"; then
    sed -i.bak '/^[[:space:]]*\/\/[#@][[:space:]]*sourceMappingURL=/d' "$out/$f" && rm -f "$out/$f.bak"
  fi
done
ls -la "$out" | awk 'NR>3 {print "  vendored " $NF " (" $5 " bytes)"}'
