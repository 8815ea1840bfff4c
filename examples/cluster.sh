#!/usr/bin/env bash
# A cluster deployment in the style of PyMLSQL's scripts: start a master with a public IP and a
# new key pair, add the user webuser and configure it, copy files up and back, release it.
# Runs unchanged against Alibaba Cloud or the local sandbox (eval "$(pymlsql sandbox start)"):
# the network it needs (VPC, vSwitch, a group open to SSH) is found or made by `pymlsql start`,
# and `pymlsql network delete` removes it afterwards.
set -euo pipefail

export MLSQL_KEY_PARE_NAME=${MLSQL_KEY_PARE_NAME:-mlsql-build-env-local}
IMAGE_ID=${IMAGE_ID:-ubuntu_22_04_x64_20G_alibase_20240926.vhd}  # a public image: root only
INSTANCE_TYPE=${INSTANCE_TYPE:-ecs.g7.large}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Start the master; progress goes to stderr, the three seed lines to stdout.
pymlsql start --image-id "${IMAGE_ID}" --instance-type "${INSTANCE_TYPE}" \
  --init-ssh-key true --key-pair-name "${MLSQL_KEY_PARE_NAME}" --need-public-ip true > "${WORK}/master"
instance_id=$(grep '^instance_id:' "${WORK}/master" | cut -d ':' -f2)
public_ip=$(grep '^public_ip:' "${WORK}/master" | cut -d ':' -f2)
intern_ip=$(grep '^intern_ip:' "${WORK}/master" | cut -d ':' -f2)
echo "master ${instance_id} public ${public_ip} intern ${intern_ip}"

# Configure it as root: the user webuser, who may log in with the same key.
SCRIPT_FILE="${WORK}/k.sh"
cat << SCRIPT > "${SCRIPT_FILE}"
#!/usr/bin/env bash
id webuser > /dev/null 2>&1 || useradd --create-home --shell /bin/bash webuser
mkdir -p /home/webuser/.ssh
cp /root/.ssh/authorized_keys /home/webuser/.ssh/
chown -R webuser:webuser /home/webuser/.ssh
chmod 700 /home/webuser/.ssh
echo "root on \$(hostname)"
SCRIPT
pymlsql exec-shell --instance-id "${instance_id}" --script-file "${SCRIPT_FILE}" \
  --execute-user root --key-pair-name "${MLSQL_KEY_PARE_NAME}"

# Copy a script and a directory up, owned by webuser with their modes.
mkdir -p "${WORK}/conf/sub"
printf '#!/usr/bin/env bash\necho "slaves started by $(whoami) in $(pwd)"\n' > "${WORK}/start-slaves.sh"
chmod 750 "${WORK}/start-slaves.sh"
echo "spark.master yarn" > "${WORK}/conf/spark-defaults.conf"
echo "secret" > "${WORK}/conf/sub/token"
chmod 600 "${WORK}/conf/sub/token"
pymlsql copy-from-local --instance-id "${instance_id}" --execute-user webuser \
  --source "${WORK}/start-slaves.sh" --target /home/webuser
pymlsql copy-from-local --instance-id "${instance_id}" --execute-user webuser \
  --source "${WORK}/conf" --target /home/webuser

# Run as webuser: a login shell in webuser's home.
cat << SCRIPT > "${SCRIPT_FILE}"
./start-slaves.sh
stat -c '%U %a %n' start-slaves.sh conf/sub/token
SCRIPT
pymlsql exec-shell --instance-id "${instance_id}" --script-file "${SCRIPT_FILE}" \
  --execute-user webuser --key-pair-name "${MLSQL_KEY_PARE_NAME}"

# Copy the directory back and compare.
mkdir -p "${WORK}/back"
pymlsql copy-to-local --instance-id "${instance_id}" --execute-user webuser \
  --source conf --target "${WORK}/back"
diff -r "${WORK}/conf" "${WORK}/back/conf" && echo "copied back identical"

# A failing script's exit status comes back.
echo 'exit 7' > "${SCRIPT_FILE}"
status=0
pymlsql exec-shell --instance-id "${instance_id}" --script-file "${SCRIPT_FILE}" --execute-user root || status=$?
echo "failing script exited ${status}"

pymlsql stop --instance-id "${instance_id}" --key-pair-name "${MLSQL_KEY_PARE_NAME}"
