#!/usr/bin/env bash
# The original Bort's fine-tuning launcher, run from the checkout's root:
#   ./run_finetune.sh TASK [extra flags…]
# TASK is any task name (BoolQ, SST, SST-2, RACE-H, …), or TEST1 (WNLI) / TEST2 (WSC): one epoch on the CPU, as
# the original's tests. The model is model/bort.params, where `bort fetch s3://alexa-saif-bort/bort.params model/`
# (or `aws s3 cp s3://alexa-saif-bort/bort.params model/`) puts it; its vocabulary is the one beside it, else the
# released Bort's, shipped with the package; BORT_MODEL / BORT_TOKENIZER choose others. Data: BORT_DATA_DIR (default ./data), then the
# original's ~/.mxnet/datasets locations. The hyper-parameters are the original script's; extra flags (ours or
# the original's) are passed on. ./scripts/run_finetune.sh is the same with MODEL as its second argument.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 TASK [extra flags…]   (TASK: a task name, TEST1 or TEST2)" >&2
  exit 2
fi
TASK=$1
shift
here=$(cd "$(dirname "$0")" && pwd)

# Default parameters, as in the original (refer to the paper for their values).
EPS=1 REPS=1 BSZ=8 SEED=2 LR=5e-5 MAXLEN=512 WD=110.0 WMUP=0.45
TEST_FLAGS=()
case "$TASK" in
  TEST1) TASK=WNLI; TEST_FLAGS=(--gpu 999 --no_distributed True) ;;  # test GLUE
  TEST2) TASK=WSC; TEST_FLAGS=(--gpu 999 --no_distributed True) ;;   # test SuperGLUE
esac

model=${BORT_MODEL:-model/bort.params}
if [ "${model#s3://}" = "$model" ] && [ ! -e "$model" ]; then
  echo "$0: no model at $model: fetch the released Bort weights with" >&2
  echo "  bort fetch s3://alexa-saif-bort/bort.params model/" >&2
  echo "(or: aws s3 cp s3://alexa-saif-bort/bort.params model/), or set BORT_MODEL to a checkpoint" >&2
  exit 2
fi
tokenizer=()
[ -n "${BORT_TOKENIZER:-}" ] && tokenizer=(--tokenizer "$BORT_TOKENIZER")

exec python3 "$here/run_finetune.py" \
  --task_name "$TASK" \
  --dataset openwebtext_ccnews_stories_books_cased \
  --pretrained_parameters "$model" \
  --batch_size $BSZ \
  --max_len $MAXLEN \
  --ramp_up_epochs $REPS \
  --epochs $EPS \
  --seed $SEED \
  --warmup_ratio $WMUP \
  --weight_decay $WD \
  --early_stop 200 \
  --lr $LR \
  --data-dir "${BORT_DATA_DIR:-data}" \
  --output_dir "${BORT_OUTPUT_DIR:-finetune_output/$TASK}" \
  ${tokenizer[@]+"${tokenizer[@]}"} ${TEST_FLAGS[@]+"${TEST_FLAGS[@]}"} "$@"
