#!/bin/bash
# One Ray node of a SLURM job, started by cobra-sweep.sbatch with srun (one task per node):
#   ray-node.sh head|worker
# It runs `ray start --block`, so Ray's processes stay children of the srun task: SLURM's
# process tracking ends them with the job, and a signal to the task stops them (no orphans).
# Resources come from what SLURM gave this task; the token from the environment (RAY_AUTH_*).
set -euo pipefail
ROLE=${1:?usage: ray-node.sh head|worker}
PYTHON=${COBRA_PYTHON:-${COBRA_ROOT:?}/.venv/bin/python}
RAY="$(dirname "$PYTHON")/ray"
PORT=${COBRA_RAY_PORT:?}

CPUS=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]]; then
    GPUS=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)   # the GPUs SLURM bound to us
else
    GPUS=${SLURM_GPUS_ON_NODE:-0}
fi
# Per-node ports that would clash when two jobs (or, in the drill, two nodes) share a host; the
# others Ray picks at random.
AGENT_PORT=$((PORT + 10 + ${SLURM_NODEID:-0}))

# A temp dir of the job's own: `ray start --head` writes its address into the temp dir for later
# `ray.init()` calls on the node, and in the shared default (/tmp/ray) every other user's local
# `ray.init()` there would join this cluster, or, once SLURM killed it, hang on the dead one.
TEMP_DIR="${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray-cobra-${SLURM_JOB_ID:?}"
common=(--num-cpus="$CPUS" --num-gpus="$GPUS" --block --disable-usage-stats
        --dashboard-agent-listen-port="$AGENT_PORT" --temp-dir="$TEMP_DIR")
echo "[ray-node $(hostname)] $ROLE: $CPUS CPU, $GPUS GPU" >&2
if [[ "$ROLE" == head ]]; then
    exec "$RAY" start --head --port="$PORT" --include-dashboard=false "${common[@]}"
fi
exec "$RAY" start --address="${RAY_ADDRESS:?}" "${common[@]}"
