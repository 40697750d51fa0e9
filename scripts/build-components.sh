#!/usr/bin/env bash
# Builds the test components written in other languages than Rust, with the
# toolchains plugin authors use, pinned:
#   - Python: componentize-py 0.25.1 (PyPI), into a venv;
#   - JavaScript: ComponentizeJS 0.23.0 (npm; StarlingMonkey), locally.
# Both against tests/components/wit (the wasi:http WIT tq-host links).
# Output: target/components/{python,js}.wasm. Toolchains live in
# target/toolchains, installed once (needs python3 with venv, and node 20).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/target/toolchains
out=$root/target/components
mkdir -p "$tools" "$out"

PY_VERSION=0.25.1
JS_VERSION=0.23.0

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 18 ]; then
  echo "components: ComponentizeJS needs node 18 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

py_installed=$("$tools/py/bin/componentize-py" --version 2>/dev/null || true)
if [[ "$py_installed" != *" $PY_VERSION"* ]]; then
  echo "components: installing componentize-py $PY_VERSION"
  python3 -m venv --clear "$tools/py"
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$PY_VERSION"
fi
js_manifest=$tools/js/node_modules/@bytecodealliance/componentize-js/package.json
js_installed=$(node -p "require('$js_manifest').version" 2>/dev/null || true)
if [ "$js_installed" != "$JS_VERSION" ]; then
  echo "components: installing @bytecodealliance/componentize-js $JS_VERSION"
  mkdir -p "$tools/js"
  # A package.json of its own, so npm installs here and nowhere above.
  echo '{"private": true}' > "$tools/js/package.json"
  npm install --prefix "$tools/js" --no-fund --no-audit --loglevel=error \
    "@bytecodealliance/componentize-js@$JS_VERSION"
fi

# ComponentizeJS reads the WIT through a sandbox that sees only its working
# directory: build in a scratch folder holding the source and the WIT.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r tests/components/wit "$work/wit"
cp tests/components/js/app.js tests/components/python/app.py "$work/"
(
  cd "$work"
  "$tools/py/bin/componentize-py" -d wit -w tq:components/proxy componentize app -o "$out/python.wasm" >/dev/null
  "$tools/js/node_modules/.bin/componentize-js" --wit wit --world-name tq:components/proxy -o "$out/js.wasm" app.js >/dev/null
)
ls -l "$out"/*.wasm | awk '{print "components: " $NF " (" $5 " bytes)"}'
