#!/usr/bin/env bash
# Distil a Bort student on one machine with NPROC processes, as the original script was launched:
#   ./scripts/run_pretraining_distillation.sh NPROC TRAIN_REC TEST_REC [TEACHER] [extra flags…]
# TRAIN_REC/TEST_REC are shard files or globs (quote globs); TEACHER is anything `load_pretrained` reads
# (default: $BORT_TEACHER). The defaults are the original script's: Bort student, T = 2, KD 0.5, MLM 0.1,
# bertadam, warmup 1%, clipping at 1. Extra flags are passed on (e.g. --max-steps 1000 --precision bf16).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NPROC TRAIN_REC TEST_REC [TEACHER] [extra flags…]" >&2
  exit 2
fi
nproc=$1 train=$2 test=$3
shift 3
teacher=${BORT_TEACHER:-}
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then teacher=$1; shift; fi
here=$(cd "$(dirname "$0")/.." && pwd)
args=(--train "$train" --test "$test" --student bort_4_8_768_1024 --temperature 2.0 --mlm-weight 0.1
      --optimizer bertadam --warmup-ratio 0.01 --clip-norm 1.0 --output-dir "${BORT_OUTPUT_DIR:-distill_output}")
[ -n "$teacher" ] && args+=(--teacher "$teacher")
# One BLAS thread per process unless the caller chose otherwise: N processes share the machine's cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / nproc > 0 ? $(nproc) / nproc : 1 ))}
exec python3 -m torch.distributed.run --standalone --nproc-per-node "$nproc" \
  "$here/run_pretraining_distillation.py" "${args[@]}" "$@"
