# KMIP test server: PyKMIP 0.11 (`pykmip-server`) over mutual TLS 1.2 on a fresh 127.0.0.1 port.
# Sourced by scripts/test and scripts/dev-services (bash, `set -euo pipefail`, services.sh loaded).
#
# Makes a throwaway CA, a server certificate (ECDSA P-256, SAN DNS:localhost: PyKMIP's TLS 1.2
# suite offers no cipher rustls accepts with an RSA key) and client certificates with openssl,
# writes the server configuration and starts the server. Exports:
#   KEYHOLD_TEST_KMIP_ADDR          127.0.0.1:<port>
#   KEYHOLD_TEST_KMIP_CA            the CA certificate (PEM) that signed the server and clients
#   KEYHOLD_TEST_KMIP_CLIENT_CERT   a client certificate (CN keyhold-test-client) and its key:
#   KEYHOLD_TEST_KMIP_CLIENT_KEY    the owner of every key the tests create
#   KEYHOLD_TEST_KMIP_OTHER_CERT    a second client signed by the same CA (CN keyhold-test-other):
#   KEYHOLD_TEST_KMIP_OTHER_KEY     PyKMIP's default policy hides the first client's keys from it
#   KEYHOLD_TEST_KMIP_ROGUE_CERT    a client certificate from a CA the server does not trust
#   KEYHOLD_TEST_KMIP_ROGUE_KEY
# The tests create their own keys through the client (Create + Activate).

kmip_setup() {
  local name=kmip dir bin port python
  dir="$KEYHOLD_SERVICES_DIR/kmip"
  mkdir -p "$dir/policies"
  command -v openssl >/dev/null || apt_install openssl
  python=$(python_at_least 9) || service_fail "$name" "python 3.9 or newer is needed for PyKMIP"
  # Pinned with the versions it was verified with: PyKMIP 0.11 is unmaintained and imports
  # SQLAlchemy and cryptography APIs that newer majors may drop.
  bin=$(python_venv pykmip "$python" 'pykmip==0.11.0' 'sqlalchemy==2.1.9' 'cryptography==50.0.2')

  kmip_cert() { # out-prefix subject issuer-prefix extensions
    openssl ecparam -name prime256v1 -genkey -noout -out "$1.sec1.key" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$1.sec1.key" -out "$1.key"
    rm -f "$1.sec1.key"
    printf '%s\n' "$4" >"$1.ext"
    if [ -z "$3" ]; then
      openssl req -x509 -new -key "$1.key" -subj "$2" -days 2 -sha256 -out "$1.crt" \
        -extensions v3 -config <(printf '[req]\ndistinguished_name=dn\n[dn]\n[v3]\n%s\n' "$4") 2>/dev/null
    else
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" -CAcreateserial -days 2 \
        -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    fi
    rm -f "$1.ext"
  }
  local ca_ext='basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign'
  local client_ext='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'
  kmip_cert "$dir/ca" "/CN=keyhold-test-kmip-ca" "" "$ca_ext" ||
    service_fail "$name" "openssl could not make the test CA"
  kmip_cert "$dir/server" "/CN=localhost" "$dir/ca" 'basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1' || service_fail "$name" "openssl: server certificate"
  kmip_cert "$dir/client" "/CN=keyhold-test-client" "$dir/ca" "$client_ext" ||
    service_fail "$name" "openssl: client certificate"
  kmip_cert "$dir/other" "/CN=keyhold-test-other" "$dir/ca" "$client_ext" ||
    service_fail "$name" "openssl: second client certificate"
  kmip_cert "$dir/rogue-ca" "/CN=keyhold-test-rogue-ca" "" "$ca_ext" ||
    service_fail "$name" "openssl: rogue CA"
  kmip_cert "$dir/rogue" "/CN=keyhold-test-client" "$dir/rogue-ca" "$client_ext" ||
    service_fail "$name" "openssl: rogue client certificate"
  unset -f kmip_cert

  # A restart on a port in TIME_WAIT hangs PyKMIP: always a fresh port, never a fixed one.
  port=$(free_port)
  cat >"$dir/server.conf" <<CONF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$dir/server.crt
key_path=$dir/server.key
ca_path=$dir/ca.crt
auth_suite=TLS1.2
policy_path=$dir/policies
enable_tls_client_auth=True
logging_level=INFO
database_path=$dir/pykmip.db
CONF
  service_start "$name" "$dir/server.out" "$bin/pykmip-server" -f "$dir/server.conf" -l "$dir/server.log"
  service_wait_port "$name" "$port" 30 "$dir/server.log"

  export KEYHOLD_TEST_KMIP_ADDR="127.0.0.1:$port"
  export KEYHOLD_TEST_KMIP_CA="$dir/ca.crt"
  export KEYHOLD_TEST_KMIP_CLIENT_CERT="$dir/client.crt"
  export KEYHOLD_TEST_KMIP_CLIENT_KEY="$dir/client.key"
  export KEYHOLD_TEST_KMIP_OTHER_CERT="$dir/other.crt"
  export KEYHOLD_TEST_KMIP_OTHER_KEY="$dir/other.key"
  export KEYHOLD_TEST_KMIP_ROGUE_CERT="$dir/rogue.crt"
  export KEYHOLD_TEST_KMIP_ROGUE_KEY="$dir/rogue.key"
  service_log "$name" "PyKMIP 0.11 on $KEYHOLD_TEST_KMIP_ADDR (mutual TLS, certificates in $dir)"
}
kmip_setup
unset -f kmip_setup
