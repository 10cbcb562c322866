#!/usr/bin/env bash
# A sharded traversal matrix on Slurm: one array task per shard, then a merge job that
# waits for all of them. Submit from the directory that should get the results:
#
#   SHARDS=16 NATS=all REPEAT=50 bash examples/scale/slurm-array.sh
#
# Run by hand, the script submits itself as an array of SHARDS tasks and the merge job;
# each array task (SLURM_ARRAY_TASK_ID set) runs its shard into $OUT/part-K/. A task
# needs root on its node (network namespaces, nftables) and nat-testbed on PATH (for
# example the venv of scripts/install.sh). docs/scale.md explains each step.
#SBATCH --job-name=nat-matrix
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --output=nat-matrix-%A_%a.log
set -euo pipefail

SHARDS=${SHARDS:-16}
NATS=${NATS:-all}
REPEAT=${REPEAT:-50}
OUT=${OUT:-nat-matrix}

if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  mkdir -p "$OUT"
  export SHARDS NATS REPEAT OUT
  job=$(sbatch --parsable --export=ALL --array="1-$SHARDS" "$0")
  sbatch --parsable --export=ALL --dependency="afterany:${job%%;*}" \
    --job-name=nat-matrix-merge --output="$OUT/merge-%j.log" \
    --wrap="nat-testbed merge $OUT/part-*/ --out $OUT/results/"
  echo "submitted $SHARDS shards (job ${job%%;*}) and their merge; results in $OUT/results/"
  exit 0
fi

K=$SLURM_ARRAY_TASK_ID
exec nat-testbed matrix --nats "$NATS" --repeat "$REPEAT" \
  --shard "$K/$SHARDS" --out "$OUT/part-$K/" --jobs "${SLURM_CPUS_PER_TASK:-2}"
