#!/bin/sh
# Installs the e2e harness's one dependency (playwright-core, pinned in package-lock.json) outside
# the repository, in $KEYHOLD_NPM_E2E (default $HOME/.cache/keyhold/npm-e2e), and links
# ./node_modules to it. Node resolves `import 'playwright-core'` through the link (ES modules
# ignore NODE_PATH). npm never runs in this directory: it would replace the link by a directory.
# No browser is downloaded: the scripts drive the system's Chromium (apt-get install chromium).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${KEYHOLD_NPM_E2E:-$HOME/.cache/keyhold/npm-e2e}
mkdir -p "$cache"
cp "$here/package.json" "$here/package-lock.json" "$cache/"
(cd "$cache" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
ln -sfn "$cache/node_modules" "$here/node_modules"
echo "playwright-core $(node -p "require('$cache/node_modules/playwright-core/package.json').version") in $cache/node_modules"
