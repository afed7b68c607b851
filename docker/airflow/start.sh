#!/bin/bash
# The Airflow container's command: write the simple auth manager's passwords file from the
# AIRFLOW_{ADMIN,OPERATOR,VIEWER}_PASSWORD variables (created 0600 by the open call, replaced
# atomically), drop the variables, and start `airflow standalone`. Airflow only reads the file:
# every user of AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS is in it, so it generates (and prints)
# no password of its own.
set -euo pipefail
file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
python - "$file" <<'PY'
import json
import os
import secrets
import sys

path = sys.argv[1]
users = ("admin", "operator", "viewer")
passwords = {user: os.environ[f"AIRFLOW_{user.upper()}_PASSWORD"] for user in users}
if not all(passwords.values()):
    sys.exit(f"empty password for {[u for u, p in passwords.items() if not p]}")
tmp = f"{path}.{secrets.token_hex(4)}"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as out:
    json.dump(passwords, out)
os.replace(tmp, path)
PY
unset AIRFLOW_ADMIN_PASSWORD AIRFLOW_OPERATOR_PASSWORD AIRFLOW_VIEWER_PASSWORD
exec airflow standalone
