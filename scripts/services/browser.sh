# Headless browser for the broker's web UI tests: Debian's Chromium and the e2e harness's one npm
# dependency (playwright-core, pinned in crates/keyhold-broker/ui/e2e/package-lock.json), sourced
# by scripts/test and scripts/dev-services (bash, `set -euo pipefail`, scripts/lib/services.sh
# loaded). Nothing is started: the test launches Chromium itself. No browser is downloaded by npm
# (this machine's Chromium is driven through executablePath). Exports:
#   KEYHOLD_TEST_CHROMIUM   the browser, /usr/bin/chromium

browser_setup() {
  local name=browser
  [ -x /usr/bin/chromium ] || apt_install chromium
  [ -x /usr/bin/chromium ] || service_fail "$name" "chromium is installed but /usr/bin/chromium is missing"
  command -v node >/dev/null || service_fail "$name" "node is needed for the browser tests"
  KEYHOLD_NPM_E2E="$KEYHOLD_CACHE/npm-e2e" crates/keyhold-broker/ui/e2e/install.sh >/dev/null 2>&1 ||
    service_fail "$name" "cannot install the e2e harness (crates/keyhold-broker/ui/e2e/install.sh)"
  export KEYHOLD_TEST_CHROMIUM=/usr/bin/chromium
  service_log "$name" "$(/usr/bin/chromium --version 2>/dev/null | head -1), playwright-core from $KEYHOLD_CACHE/npm-e2e"
}

browser_setup
unset -f browser_setup
