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

if [ ! -x "$tools/py/bin/componentize-py" ] \
  || ! "$tools/py/bin/componentize-py" --version | grep -q "$PY_VERSION"; then
  echo "components: installing componentize-py $PY_VERSION"
  python3 -m venv "$tools/py"
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$PY_VERSION"
fi
if [ ! -x "$tools/js/node_modules/.bin/componentize-js" ] \
  || ! grep -q "\"version\": \"$JS_VERSION\"" "$tools/js/node_modules/@bytecodealliance/componentize-js/package.json"; then
  echo "components: installing @bytecodealliance/componentize-js $JS_VERSION"
  mkdir -p "$tools/js"
  (cd "$tools/js" && npm install --silent --no-fund --no-audit --no-save \
    "@bytecodealliance/componentize-js@$JS_VERSION" >/dev/null)
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
