#!/usr/bin/env bash
# The compose drill: the whole stack of docker/compose.yaml, for real, on one Docker host.
#
#   docker/drill.sh          build cobra:cpu (and the PostgreSQL image if none can be pulled), start
#                            PostgreSQL + MLflow (basic auth) + a Ray head + two CPU workers (token
#                            auth), run a short demo sweep from the head, read every trial back
#                            through the MLflow client with a login, tear down
#   KEEP=1 docker/drill.sh   leave the stack up afterwards (remove it with: docker/drill.sh down)
#   docker/drill.sh down     remove the drill's containers, network and volumes
#
# It never touches a user's own stack: its own compose project (cobra-drill), its own volumes, and
# freshly generated secrets in $STATE/env (mode 600, removed by `down`), never docker/.env.
#
# Settings (environment):
#   BASE             base image of the three images (default python:3.11-slim-bookworm). When it
#                    cannot be pulled and debootstrap is installed, docker/base-image.sh makes
#                    cobra-base:bookworm from Debian packages and the drill uses that.
#   POSTGRES_IMAGE   default postgres:16-bookworm; when it cannot be pulled, docker/Dockerfile.postgres
#                    (Debian's PostgreSQL 15) is built on BASE.
#   TORCH_INDEX_URL  wheel index for torch in the CPU image (default: PyTorch's CPU index, or
#                    `pypi` - PyPI's CUDA build, which runs on CPU - when that index is unreachable).
#   PIP_INDEX_URL    another package index than PyPI, passed to the image builds.
#   EXTRA_CA_CERTS_FILE  PEM file of extra CAs the builds must trust (a TLS-inspecting proxy);
#                    default: the local CAs in /usr/local/share/ca-certificates/*.crt, if any.
#   SKIP_BUILD=1     use the images an earlier run built (no docker build).
#   BUILD_GPU=1      also build cobra:gpu (docker/Dockerfile.gpu: about 7 GB more, a long build)
#                    and run the two workers on it (its PyTorch runs on a CPU). Off by default:
#                    the CPU workers of this drill run cobra:cpu (compose.cpu-workers.yaml), so a
#                    host without GPUs never builds an image only GPU workers need.
#   STATE            where the env file and the log go (default /tmp/cobra-drill).
#   PYTHON           a Python with mlflow for the host-side read-back (default .venv/bin/python;
#                    without one the read-back runs inside the head container).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=cobra-drill
STATE=${STATE:-/tmp/cobra-drill}
BASE=${BASE:-python:3.11-slim-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:16-bookworm}
PYTHON=${PYTHON:-.venv/bin/python}
LOG=$STATE/drill.log
case "${BUILD_GPU:-0}" in
  0) WORKER_IMAGE=cobra:cpu ;;
  1) WORKER_IMAGE=cobra:gpu ;;
  *) echo "error: BUILD_GPU=${BUILD_GPU} is neither 0 nor 1: unset it, or BUILD_GPU=1 for GPU-image workers" >&2; exit 2 ;;
esac

say() { echo "drill: $*"; }
die() { echo "error: $*" >&2; exit 2; }
compose() {
  docker compose -p "$PROJECT" --env-file "$STATE/env" \
    -f docker/compose.yaml -f docker/compose.cpu-workers.yaml "$@"
}

# Removes project cobra-drill whoever started it: without this run's env file, placeholder
# secrets only let compose parse the file (nothing is started with them).
down() {
  local env=$STATE/env
  if [ ! -f "$env" ]; then
    env=$(mktemp)
    printf '%s=unused\n' POSTGRES_PASSWORD MLFLOW_ADMIN_PASSWORD MLFLOW_SECRET_KEY RAY_AUTH_TOKEN > "$env"
  fi
  docker compose -p "$PROJECT" --env-file "$env" -f docker/compose.yaml \
    -f docker/compose.cpu-workers.yaml down -v --remove-orphans >>"$LOG" 2>&1 || true
  rm -f "$env" "$STATE/env"
}

preflight() {
  command -v docker >/dev/null || die "docker not found: install Docker Engine 24+ (Debian: apt-get install docker.io)"
  docker info >/dev/null 2>&1 || die "no Docker engine answers: start dockerd (or the docker service) first"
  docker compose version >/dev/null 2>&1 || die "the Compose v2 plugin is missing: install docker-compose-plugin (or see docker/README.md)"
}

# An image that is here, or can be pulled.
have_image() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >>"$LOG" 2>&1; }

ensure_base() {
  have_image "$BASE" && return
  if docker image inspect cobra-base:bookworm >/dev/null 2>&1; then
    say "cannot pull $BASE: using the local cobra-base:bookworm (docker/base-image.sh)"
    BASE=cobra-base:bookworm
    return
  fi
  command -v debootstrap >/dev/null \
    || die "cannot pull $BASE and debootstrap is missing: apt-get install debootstrap, or set BASE to a local Debian 12 + Python 3.11 image"
  say "cannot pull $BASE: building cobra-base:bookworm from Debian packages (docker/base-image.sh)"
  BASE=cobra-base:bookworm
  bash docker/base-image.sh "$BASE" >>"$LOG" 2>&1 || die "docker/base-image.sh failed: see $LOG"
}

build_args() {
  local ca=${EXTRA_CA_CERTS_FILE:-}
  BUILD_ARGS=(--build-arg "BASE=$BASE")
  [ -n "${PIP_INDEX_URL:-}" ] && BUILD_ARGS+=(--build-arg "PIP_INDEX=$PIP_INDEX_URL")
  if [ -z "$ca" ] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cat /usr/local/share/ca-certificates/*.crt > "$STATE/extra-ca.pem"
    ca=$STATE/extra-ca.pem
  fi
  [ -n "$ca" ] && BUILD_ARGS+=(--build-arg "EXTRA_CA_CERTS=$(cat "$ca")")
  if [ -z "${TORCH_INDEX_URL:-}" ]; then
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
    if ! python3 -c "import urllib.request as u; u.urlopen('$TORCH_INDEX_URL/torch/', timeout=10)" 2>/dev/null; then
      say "PyTorch's CPU index is unreachable: the CPU image gets PyPI's torch build (runs on CPU, larger)"
      TORCH_INDEX_URL=pypi
    fi
  fi
  return 0
}

build() {
  if [ "${SKIP_BUILD:-0}" = 1 ]; then  # images from an earlier run: cobra:cpu, cobra:gpu, postgres
    have_image "$POSTGRES_IMAGE" || POSTGRES_IMAGE=cobra-postgres:local
    say "SKIP_BUILD=1: using the existing cobra:cpu (mlflow, head), $WORKER_IMAGE (workers), $POSTGRES_IMAGE"
    return
  fi
  ensure_base
  build_args
  local t0=$SECONDS
  say "building cobra:cpu on $BASE (log: $LOG)"
  # The build stage (the multi-GB venv) is tagged cobra-build:cpu first, so `docker image prune`
  # keeps it as the layer cache: after an edit of cobra/ the next build takes seconds, not a
  # quarter of an hour. `docker rmi cobra-build:cpu cobra-build:gpu` gives that disk back.
  docker build -f docker/Dockerfile.cpu --target build "${BUILD_ARGS[@]}" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" -t cobra-build:cpu . >>"$LOG" 2>&1 \
    || die "building cobra:cpu's build stage failed: see $LOG"
  docker build -f docker/Dockerfile.cpu "${BUILD_ARGS[@]}" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" -t cobra:cpu . >>"$LOG" 2>&1 \
    || die "building cobra:cpu failed: see $LOG"
  if [ "$WORKER_IMAGE" = cobra:gpu ]; then
    say "BUILD_GPU=1: building cobra:gpu on $BASE"
    docker build -f docker/Dockerfile.gpu --target build "${BUILD_ARGS[@]}" -t cobra-build:gpu . \
      >>"$LOG" 2>&1 || die "building cobra:gpu's build stage failed: see $LOG"
    docker build -f docker/Dockerfile.gpu "${BUILD_ARGS[@]}" -t cobra:gpu . >>"$LOG" 2>&1 \
      || die "building cobra:gpu failed: see $LOG"
  fi
  if ! have_image "$POSTGRES_IMAGE"; then
    say "cannot pull $POSTGRES_IMAGE: building cobra-postgres:local (docker/Dockerfile.postgres)"
    POSTGRES_IMAGE=cobra-postgres:local
    docker build -f docker/Dockerfile.postgres --build-arg "BASE=$BASE" -t "$POSTGRES_IMAGE" . \
      >>"$LOG" 2>&1 || die "building $POSTGRES_IMAGE failed: see $LOG"
  fi
  say "images built in $((SECONDS - t0)) s"
}

# The stack's ulimits, capped at what this host allows (a container cannot exceed the engine's).
nofile_limit() { local n; n=$(ulimit -Hn); [ "$n" = unlimited ] || [ "$n" -gt 65536 ] && n=65536; echo "$n"; }
memlock_limit() { local n; n=$(ulimit -Hl); [ "$n" = unlimited ] && echo -1 || echo $((n * 1024)); }
secret() { python3 -c "import secrets; print(secrets.token_hex(32))"; }
free_port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

write_env() {
  (
    umask 077
    cat > "$STATE/env" <<EOF
POSTGRES_PASSWORD=$(secret)
MLFLOW_ADMIN_PASSWORD=$(secret)
MLFLOW_SECRET_KEY=$(secret)
RAY_AUTH_TOKEN=$(secret)
POSTGRES_IMAGE=$POSTGRES_IMAGE
COBRA_IMAGE_CPU=cobra:cpu
COBRA_IMAGE_GPU=cobra:gpu
COBRA_IMAGE_WORKER=$WORKER_IMAGE
MLFLOW_HOST_PORT=$(free_port)
MLFLOW_WORKERS=1
RAY_HEAD_NUM_CPUS=0
RAY_HEAD_SHM_SIZE=1gb
RAY_WORKER_REPLICAS=2
RAY_WORKER_GPUS=0
RAY_WORKER_CPUS=1
RAY_WORKER_SHM_SIZE=1gb
RAY_NOFILE=$(nofile_limit)
RAY_WORKER_MEMLOCK=$(memlock_limit)
EOF
  )
}

up() {
  say "starting postgres, mlflow, ray-head and 2 ray-workers (project $PROJECT)"
  compose up -d --no-build --wait --wait-timeout 600 >>"$LOG" 2>&1 \
    || { compose ps -a >>"$LOG" 2>&1; compose logs --tail 50 >>"$LOG" 2>&1; die "the stack did not come up: see $LOG"; }
  compose ps --format '{{.Service}} {{.Name}} {{.Status}}' | sed 's/^/drill: service /'
  local deadline=$((SECONDS + 300))
  until [ "$(compose exec -T ray-head python -c 'import ray; ray.init(logging_level="ERROR"); print(sum(n["Alive"] for n in ray.nodes()))' 2>>"$LOG" | tail -1)" = 3 ]; do
    [ $SECONDS -lt $deadline ] || die "the two workers did not join the head (token auth?): see $LOG"
    sleep 5
  done
  say "ray: 3 nodes alive (head + 2 workers), token auth on"
  compose exec -T ray-head python -c "$(cat <<'EOF'
import ray
ray.init(logging_level="ERROR")
for n in ray.nodes():
    role = "head" if "node:__internal_head__" in n["Resources"] else "worker"
    print("drill: ray node", n["NodeID"][:12], role, n["NodeManagerAddress"],
          "CPU=%g" % n["Resources"].get("CPU", 0))
EOF
)" 2>>"$LOG"
  # Token auth is on: a driver with another token (a fresh random one, not the cluster's) is refused.
  local intruder
  intruder=$(compose exec -T -e "RAY_AUTH_TOKEN=$(secret)" ray-head timeout 120 \
    python -c 'import ray; ray.init(logging_level="ERROR"); print("drill: JOINED")' 2>&1 || true)
  echo "$intruder" >>"$LOG"
  if grep -q "drill: JOINED" <<<"$intruder" || ! grep -q InvalidAuthToken <<<"$intruder"; then
    die "a Ray driver with a wrong token was not refused with InvalidAuthToken: see $LOG"
  fi
  say "ray: a driver with a wrong token is refused (InvalidAuthToken)"
}

# A shortened demo sweep: two trials, one CPU each, so each worker (1 CPU) runs one of them.
sweep() {
  local t0=$SECONDS
  say "running the sweep from ray-head"
  compose exec -T ray-head sh -c 'cat > /tmp/drill.yaml && python /opt/cobra/launch.py sweep /tmp/drill.yaml' \
    > "$STATE/sweep.out" 2>>"$LOG" <<'EOF' || { tail -40 "$STATE/sweep.out" >>"$LOG"; die "the sweep failed: see $LOG"; }
name: drill
base: /opt/cobra/configs/demo.yaml
overrides:
  model.embed_dim: 16
  data.image_size: 64
  data.resize_long: [56, 80]
  data.synthetic.num_train: 24
  data.synthetic.num_val: 8
  data.synthetic.image_size: 64
  train.epochs: 2
  train.batch_size: 8
  train.max_steps_per_epoch: 3
  train.progress: false
  seeds.scales: [1.0]
  seeds.max_images: 8
  pretrain.image_size: 32
  pretrain.num_images: 64
  pretrain.num_val: 16
  pretrain.epochs: 1
  pretrain.batch_size: 32
space:
  loss.k_cap_pos: [2, 6]
search: {algorithm: grid, seed: 0}
metric: seed_miou
mode: max
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
max_failures: 1
storage: /shared/ray_results
mlflow: {experiment: drill}
EOF
  grep '^{"sweep"' "$STATE/sweep.out" | tail -1 | sed 's/^/drill: sweep result /'
  say "sweep took $((SECONDS - t0)) s"
}

# Read every trial back through MLflow's client, logged in; and show that no login means 401.
read_back() {
  local code
  code=$(cat <<'EOF'
import json, os, sys, urllib.error, urllib.request
from mlflow.tracking import MlflowClient

uri = os.environ["MLFLOW_TRACKING_URI"]
try:
    urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    anonymous = 200
except urllib.error.HTTPError as exc:
    anonymous = exc.code
client = MlflowClient(uri)
exp = client.get_experiment_by_name("drill")
runs = client.search_runs([exp.experiment_id], "tags.`cobra.kind` = 'trial'")
for r in runs:
    print("drill: trial", r.info.run_name, r.info.status, "node", r.data.tags.get("ray_node_id", "?")[:12],
          "seed_miou %.4f" % r.data.metrics.get("seed_miou", float("nan")),
          "epochs", len(client.get_metric_history(r.info.run_id, "loss_cls")))
nodes = sorted({r.data.tags.get("ray_node_id") for r in runs})
summary = {"user": os.environ["MLFLOW_TRACKING_USERNAME"], "trials": len(runs),
           "finished": sum(r.info.status == "FINISHED" for r in runs), "nodes": len(nodes),
           "anonymous_http_status": anonymous}
print("drill: read-back", json.dumps(summary))
want = {**summary, "trials": 2, "finished": 2, "nodes": 2, "anonymous_http_status": 401}
if summary != want:
    sys.exit(f"drill: FAILED: read back {summary}, expected {want}")
EOF
)
  if [ -x "$PYTHON" ] && "$PYTHON" -c "import mlflow" 2>/dev/null; then
    say "reading the runs back from the host through http://127.0.0.1:$(env_value MLFLOW_HOST_PORT)"
    MLFLOW_TRACKING_URI=http://127.0.0.1:$(env_value MLFLOW_HOST_PORT) \
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(env_value MLFLOW_ADMIN_PASSWORD) \
      "$PYTHON" -c "$code"
  else
    say "reading the runs back from ray-head through http://mlflow:5000"
    compose exec -T ray-head python -c "$code"
  fi
}

env_value() { sed -n "s/^$1=//p" "$STATE/env"; }

main() {
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  if [ "${1:-}" = down ]; then down; say "removed"; exit 0; fi
  : > "$LOG"
  preflight
  down
  build
  write_env
  [ "${KEEP:-0}" = 1 ] || trap down EXIT
  up
  sweep
  read_back
  say "passed in $SECONDS s"
}

main "$@"; exit $?  # on one line: an edit of this file while it runs cannot run more of it
