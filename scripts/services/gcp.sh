# Google Cloud KMS request-shape test server (sourced by scripts/test and scripts/dev-services;
# see scripts/lib/services.sh).
#
# There is no installable Cloud KMS emulator. drongo 0.8.0 (PyPI, "the moto for GCP") serves the
# Cloud KMS REST paths (key rings, crypto keys, :encrypt, :decrypt) from memory, with NO real
# cryptography: its ciphertext is base64 of JSON holding the key name, the plaintext and the AAD.
# It checks no tokens, and has no key versions or states. The gcp tests use it for request
# shapes and round trips only (crates/keyhold-kms/tests/gcp_contract.rs says what else they do).
# google-crc32c lets drongo fill in the CRC32C integrity fields, which the backend verifies.
#
# Exports KEYHOLD_TEST_DRONGO_URL (http://127.0.0.1:<port>). The tests make their own key rings
# and keys (drongo needs no set-up, and per-test rings keep runs apart).

gcp_setup() {
  local dir bin port python i
  dir="$KEYHOLD_SERVICES_DIR/gcp"
  mkdir -p "$dir"
  python=$(python_at_least 10) || service_fail drongo "drongo needs Python >= 3.10 (none on PATH or in ~/.pyenv/versions)"
  bin=$(python_venv drongo "$python" 'drongo==0.8.0' 'google-crc32c==1.9.0')
  port=$(free_port)
  service_start drongo "$dir/drongo.log" "$bin/drongo" server --host 127.0.0.1 --port "$port"
  service_wait_port drongo "$port" 30 "$dir/drongo.log"
  for ((i = 0; ; i++)); do
    if curl -fsS "http://127.0.0.1:$port/drongo/health" 2>/dev/null | grep -q '"kms"'; then
      break
    fi
    [ "$i" -lt 100 ] || service_fail drongo "the kms service is not listed after 10 s" "$dir/drongo.log"
    sleep 0.1
  done
  export KEYHOLD_TEST_DRONGO_URL="http://127.0.0.1:$port"
  service_log drongo "ready at $KEYHOLD_TEST_DRONGO_URL (Cloud KMS REST shapes, no real crypto)"
}
gcp_setup
unset -f gcp_setup
