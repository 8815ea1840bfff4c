#!/usr/bin/env bash
# The steps of examples/cluster.sh written with OpenSSH's ssh and scp: the reference that
# benchmarks/run.py times it against. Starting and releasing the master have no OpenSSH
# equivalent, so both scripts do those with `pymlsql start` and `pymlsql stop`, alike; every step
# between them (configure as root, copy up, run as webuser, copy back, a failing script) is ssh/scp.
set -euo pipefail

export MLSQL_KEY_PARE_NAME=${MLSQL_KEY_PARE_NAME:-mlsql-build-env-local}
IMAGE_ID=${IMAGE_ID:-ubuntu_22_04_x64_20G_alibase_20240926.vhd}
INSTANCE_TYPE=${INSTANCE_TYPE:-ecs.g7.large}
KEY=~/.ssh/${MLSQL_KEY_PARE_NAME}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# As a script in a hurry writes it: the host key of a new instance is taken as it comes.
SSH_OPTIONS=(-i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)

pymlsql start --image-id "${IMAGE_ID}" --instance-type "${INSTANCE_TYPE}" \
  --init-ssh-key true --key-pair-name "${MLSQL_KEY_PARE_NAME}" --need-public-ip true > "${WORK}/master"
instance_id=$(grep '^instance_id:' "${WORK}/master" | cut -d ':' -f2)
public_ip=$(grep '^public_ip:' "${WORK}/master" | cut -d ':' -f2)
intern_ip=$(grep '^intern_ip:' "${WORK}/master" | cut -d ':' -f2)
echo "master ${instance_id} public ${public_ip} intern ${intern_ip}"

ssh "${SSH_OPTIONS[@]}" "root@${public_ip}" bash -s << 'SCRIPT'
id webuser > /dev/null 2>&1 || useradd --create-home --shell /bin/bash webuser
mkdir -p /home/webuser/.ssh
cp /root/.ssh/authorized_keys /home/webuser/.ssh/
chown -R webuser:webuser /home/webuser/.ssh
chmod 700 /home/webuser/.ssh
echo "root on $(hostname)"
SCRIPT

mkdir -p "${WORK}/conf/sub"
printf '#!/usr/bin/env bash\necho "slaves started by $(whoami) in $(pwd)"\n' > "${WORK}/start-slaves.sh"
chmod 750 "${WORK}/start-slaves.sh"
echo "spark.master yarn" > "${WORK}/conf/spark-defaults.conf"
echo "secret" > "${WORK}/conf/sub/token"
chmod 600 "${WORK}/conf/sub/token"
# Logged in as webuser, the copies are webuser's; -p keeps the modes.
scp -q -p "${SSH_OPTIONS[@]}" "${WORK}/start-slaves.sh" "webuser@${public_ip}:/home/webuser/"
scp -q -rp "${SSH_OPTIONS[@]}" "${WORK}/conf" "webuser@${public_ip}:/home/webuser/"

ssh "${SSH_OPTIONS[@]}" "webuser@${public_ip}" bash -l -s << 'SCRIPT'
./start-slaves.sh
stat -c '%U %a %n' start-slaves.sh conf/sub/token
SCRIPT

mkdir -p "${WORK}/back"
scp -q -rp "${SSH_OPTIONS[@]}" "webuser@${public_ip}:conf" "${WORK}/back/"
diff -r "${WORK}/conf" "${WORK}/back/conf" && echo "copied back identical"

status=0
ssh "${SSH_OPTIONS[@]}" "root@${public_ip}" 'exit 7' || status=$?
echo "failing script exited ${status}"

pymlsql stop --instance-id "${instance_id}" --key-pair-name "${MLSQL_KEY_PARE_NAME}"
