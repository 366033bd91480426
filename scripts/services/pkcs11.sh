# PKCS#11 test token: SoftHSM 2 (Debian's softhsm2, 2.6.1 on bookworm), sourced by scripts/test
# and scripts/dev-services (bash, `set -euo pipefail`, scripts/lib/services.sh loaded).
#
# SoftHSM is a library loaded into the test process, not a server: nothing listens and nothing
# is started. This installs it (and opensc's pkcs11-tool, handy for looking at the token by hand),
# writes a private SoftHSM configuration whose token directory lives under
# $KEYHOLD_SERVICES_DIR/pkcs11 (removed when the run ends), and initializes the test tokens with
# fresh random PINs. The tests create their own AES keys in it (unique labels per test). Exports:
#   SOFTHSM2_CONF                  the SoftHSM configuration file (SoftHSM reads it at C_Initialize)
#   KEYHOLD_TEST_PKCS11_MODULE     the module, /usr/lib/softhsm/libsofthsm2.so
#   KEYHOLD_TEST_PKCS11_TOKEN      the tokens' label prefix, keyhold-test: the tokens are
#                                  keyhold-test-1 ... keyhold-test-16, one per test
#   KEYHOLD_TEST_PKCS11_PIN        their user PIN
#   KEYHOLD_TEST_PKCS11_SO_PIN     their security officer PIN
# By hand: pkcs11-tool --module "$KEYHOLD_TEST_PKCS11_MODULE" --token-label keyhold-test-1 \
#   --login --pin "$KEYHOLD_TEST_PKCS11_PIN" --list-objects

pkcs11_setup() {
  local name=pkcs11 dir module=/usr/lib/softhsm/libsofthsm2.so pin so_pin
  dir="$KEYHOLD_SERVICES_DIR/pkcs11"
  mkdir -p "$dir/tokens"
  apt_install softhsm2 opensc
  [ -r "$module" ] || service_fail "$name" "softhsm2 is installed but $module is missing"
  { command -v softhsm2-util && command -v pkcs11-tool; } >/dev/null ||
    service_fail "$name" "softhsm2-util or pkcs11-tool is missing (a package removed but not purged? apt-get install --reinstall softhsm2 opensc)"

  cat >"$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
CONF
  pin=$(python3 -c 'import secrets; print("user-" + secrets.token_hex(8))')
  so_pin=$(python3 -c 'import secrets; print("so-" + secrets.token_hex(8))')
  # One token per test (keyhold-test-1 ... keyhold-test-16): SoftHSM rewrites a token's file on
  # every login, and another process reading that token meanwhile may see it half-written (an
  # empty label, CKR_GENERAL_ERROR). cargo-nextest runs each test in its own process.
  local i
  for ((i = 1; i <= 16; i++)); do
    SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "keyhold-test-$i" \
      --so-pin "$so_pin" --pin "$pin" >>"$dir/init.log" 2>&1 ||
      service_fail "$name" "softhsm2-util could not initialize the test token keyhold-test-$i" "$dir/init.log"
  done

  export SOFTHSM2_CONF="$dir/softhsm2.conf"
  export KEYHOLD_TEST_PKCS11_MODULE="$module"
  export KEYHOLD_TEST_PKCS11_TOKEN=keyhold-test
  export KEYHOLD_TEST_PKCS11_PIN="$pin"
  export KEYHOLD_TEST_PKCS11_SO_PIN="$so_pin"
  service_log "$name" "SoftHSM $(softhsm2-util --version), tokens keyhold-test-{1..16} (config $SOFTHSM2_CONF)"
}
pkcs11_setup
unset -f pkcs11_setup
