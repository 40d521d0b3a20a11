#!/bin/sh
# `mlflow server` with basic auth (the compose stack's mlflow service runs this).
#
# Users, passwords and permissions live in the same PostgreSQL database as the runs (MLflow's auth
# tables have their own migration table), so nothing extra needs a volume. The auth config file
# holds that database URI, password included, so it is written at start from the environment into
# a private file, never baked into the image. The admin account is created on the first start from
# MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (MLflow ships no default password and
# refuses to start without one); MLFLOW_FLASK_SERVER_SECRET_KEY signs the login forms (CSRF).
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set by compose from POSTGRES_* in docker/.env}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD in docker/.env}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_SECRET_KEY in docker/.env}"

umask 077
config=$(mktemp -d)/basic_auth.ini
# configparser reads % as interpolation: double it in the URI.
python - "$config" <<'PY'
import configparser, os, sys
cfg = configparser.ConfigParser()
cfg["mlflow"] = {
    "default_permission": os.environ.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ"),
    "database_uri": os.environ["MLFLOW_BACKEND_STORE_URI"].replace("%", "%%"),
    "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
}
with open(sys.argv[1], "w") as f:
    cfg.write(f)
PY
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --app-name basic-auth "$@"
