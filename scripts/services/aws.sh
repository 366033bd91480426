# AWS KMS test servers (sourced by scripts/test and scripts/dev-services; see scripts/lib/services.sh).
#
# - LocalStack (`localstack-core`, Python >= 3.13): a KMS that enforces key states (Disabled,
#   PendingDeletion) and encryption contexts, but checks no signatures. Exports
#   KEYHOLD_TEST_LOCALSTACK_URL.
# - moto in server mode with INITIAL_NO_AUTH_ACTION_COUNT: after the first few requests it checks
#   SigV4 signatures and IAM policies. Those first unauthenticated requests create an IAM user with
#   a policy allowing kms:* and sts:AssumeRole, an access key for it, and a role allowing kms:*
#   (with boto3 from moto's own venv). Exports KEYHOLD_TEST_MOTO_URL,
#   KEYHOLD_TEST_MOTO_ACCESS_KEY_ID, KEYHOLD_TEST_MOTO_SECRET_ACCESS_KEY and KEYHOLD_TEST_MOTO_ROLE_ARN.

aws_dir="$KEYHOLD_SERVICES_DIR/aws"
mkdir -p "$aws_dir/localstack"

# --- LocalStack
aws_python=$(python_at_least 13) ||
  service_fail aws "LocalStack needs Python >= 3.13 (none on PATH or in ~/.pyenv/versions)"
aws_localstack_bin=$(python_venv localstack "$aws_python" \
  'localstack-core[runtime]==2026.3.0' 'cbor2<6' 'pyopenssl==24.2.1' 'cryptography==43.0.3' service_identity)
aws_localstack_port=$(free_port)
# LocalStack's graceful shutdown can hang (seen when its directory is removed meanwhile, as
# scripts/test does right after stopping the servers): a wrapper turns the stop signal into SIGKILL.
# shellcheck disable=SC2016
service_start localstack "$aws_dir/localstack.log" env \
  GATEWAY_SERVER=hypercorn GATEWAY_LISTEN="127.0.0.1:$aws_localstack_port" SERVICES=kms DNS_ADDRESS=0 \
  LOCALSTACK_TELEMETRY_DISABLED=1 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
  FILESYSTEM_ROOT="$aws_dir/localstack" \
  bash -c 'trap "kill -KILL \$child 2>/dev/null; exit 143" TERM INT
    "$1" -m localstack.runtime.main & child=$!
    wait "$child"' localstack "$aws_localstack_bin/python"

# --- moto (started meanwhile; set up below)
aws_moto_bin=$(python_venv moto python3 'moto[server]==5.2.5')
aws_moto_port=$(free_port)
# CreateUser, PutUserPolicy, CreateAccessKey, CreateRole, PutRolePolicy: then signatures and IAM
# policies are enforced.
service_start moto "$aws_dir/moto.log" env INITIAL_NO_AUTH_ACTION_COUNT=5 \
  "$aws_moto_bin/moto_server" -H 127.0.0.1 -p "$aws_moto_port"

service_wait_port localstack "$aws_localstack_port" 60 "$aws_dir/localstack.log"
# The port opens before the KMS provider is ready: wait for the health endpoint to list it.
for ((aws_i = 0; ; aws_i++)); do
  if curl -fsS "http://127.0.0.1:$aws_localstack_port/_localstack/health" 2>/dev/null |
    grep -Eq '"kms": *"(available|running)"'; then
    break
  fi
  [ "$aws_i" -lt 600 ] || service_fail localstack "KMS not available after 60 s" "$aws_dir/localstack.log"
  sleep 0.1
done
export KEYHOLD_TEST_LOCALSTACK_URL="http://127.0.0.1:$aws_localstack_port"
service_log localstack "ready at $KEYHOLD_TEST_LOCALSTACK_URL"

service_wait_port moto "$aws_moto_port" 60 "$aws_dir/moto.log"
aws_moto_keys=$(
  AWS_ACCESS_KEY_ID=setup AWS_SECRET_ACCESS_KEY=setup AWS_DEFAULT_REGION=us-east-1 \
    "$aws_moto_bin/python" - "http://127.0.0.1:$aws_moto_port" <<'PY' 2>>"$aws_dir/moto.log"
import json, sys
import boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1])
def policy(*actions):
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
    })
iam.create_user(UserName="keyhold-proxy")
iam.put_user_policy(UserName="keyhold-proxy", PolicyName="kms", PolicyDocument=policy("kms:*", "sts:AssumeRole"))
key = iam.create_access_key(UserName="keyhold-proxy")["AccessKey"]
trust = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
})
role = iam.create_role(RoleName="keyhold-tenant-kms", AssumeRolePolicyDocument=trust)["Role"]
iam.put_role_policy(RoleName="keyhold-tenant-kms", PolicyName="kms", PolicyDocument=policy("kms:*"))
print(key["AccessKeyId"], key["SecretAccessKey"], role["Arn"])
PY
) || service_fail moto "IAM set-up failed" "$aws_dir/moto.log"
read -r KEYHOLD_TEST_MOTO_ACCESS_KEY_ID KEYHOLD_TEST_MOTO_SECRET_ACCESS_KEY KEYHOLD_TEST_MOTO_ROLE_ARN \
  <<<"$aws_moto_keys"
export KEYHOLD_TEST_MOTO_ACCESS_KEY_ID KEYHOLD_TEST_MOTO_SECRET_ACCESS_KEY KEYHOLD_TEST_MOTO_ROLE_ARN
export KEYHOLD_TEST_MOTO_URL="http://127.0.0.1:$aws_moto_port"
service_log moto "ready at $KEYHOLD_TEST_MOTO_URL (SigV4 + IAM on: user keyhold-proxy, role keyhold-tenant-kms)"
unset aws_dir aws_python aws_localstack_bin aws_localstack_port aws_moto_bin aws_moto_port aws_moto_keys aws_i
