#!/usr/bin/env bash
# The original Bort's distillation launcher, run from the checkout's root:
#   ./run_pretraining_distillation.sh NPROC TRAIN_DATA TEST_DATA [TEACHER] [extra flags…]
# TRAIN_DATA/TEST_DATA are shard files or globs (quote globs). TEACHER is, as in the original, a directory holding
# the RoBERTa-large teacher's Gluon .params (--teacher_ckpt_dir), or here any checkpoint load_pretrained reads;
# without one (nor BORT_TEACHER) the student trains on the MLM loss alone (nothing downloads here).
# TRAIN_DATA=TEST: the original's test: shards from test_data/sample_text.txt (vocabulary: Bort's, shipped with the
# package, or BORT_VOCAB), then 4 steps of batch 2 on the CPU.
# The hyper-parameters are the original script's; float32 unless BORT_DTYPE=float16 (a GPU precision).
# ./scripts/run_pretraining_distillation.sh takes the same positional arguments with this suite's flag names.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NPROC TRAIN_DATA TEST_DATA [TEACHER] [extra flags…]   (TRAIN_DATA=TEST: the original's test)" >&2
  exit 2
fi
NUMPROC=$1 TRAIN_DATA_DIR=$2 TEST_DATA_DIR=$3
shift 3
TEACHER=${BORT_TEACHER:-}
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then TEACHER=$1; shift; fi
here=$(cd "$(dirname "$0")" && pwd)

# BS: the original's 1024 with --use_avg_len is tokens per batch, 2 records of 512; --batch_size counts records here.
CPU_ONLY=() DTYPE=${BORT_DTYPE:-float32} NUM_STEPS=2000000 LR=1e-4 BS=2 BS_EVAL=16 ACC=1
LOG_INTERVAL=10 CKPT_INTERVAL=10
MODEL_NAME=bort_4_8_768_1024
DIR_NAME=${MODEL_NAME}_model

if [ "$TRAIN_DATA_DIR" = "TEST" ]; then
  DTYPE=float32
  CPU_ONLY=(--cpu_only)
  TEST_DIR=pretraining_distillation_test
  vocab=()  # default: Bort's vocabulary, shipped with the package (--dataset_name below means it)
  if [ -n "${BORT_VOCAB:-}" ]; then
    if [ ! -e "$BORT_VOCAB" ]; then
      echo "$0: BORT_VOCAB=$BORT_VOCAB does not exist (a vocabulary file or a directory holding one)" >&2
      exit 2
    fi
    vocab=(--vocab "$BORT_VOCAB")
  fi
  rm -rf "$TEST_DIR"
  mkdir -p "$TEST_DIR"
  python3 "$here/create_pretraining_data.py" --input_file="$here/test_data/sample_text.txt" \
    --output_dir="$TEST_DIR" ${vocab[@]+"${vocab[@]}"} --dataset_name openwebtext_ccnews_stories_books_cased \
    --dupe_factor 1 --num_workers 1 --quiet
  DIR_NAME=$TEST_DIR/${MODEL_NAME}_model
  TRAIN_DATA_DIR="$TEST_DIR/part-*.rec"
  TEST_DATA_DIR="$TEST_DIR/part-*.rec"
  NUM_STEPS=4 BS=2 BS_EVAL=2 LOG_INTERVAL=2 CKPT_INTERVAL=2
fi

teacher_args=()
if [ -n "$TEACHER" ]; then
  if [ -d "$TEACHER" ] && compgen -G "$TEACHER/*.params" > /dev/null; then
    teacher_args=(--teacher_model roberta_24_1024_16 --teacher_ckpt_dir "$TEACHER")
  else
    teacher_args=(--teacher "$TEACHER")
  fi
  teacher_args+=(--teacher_ce_weight 0.5)
else
  echo "$0: no teacher (4th argument or BORT_TEACHER): training on the MLM loss alone" >&2
fi

mkdir -p "$DIR_NAME"
launch=(python3)
if [ "$NUMPROC" -gt 1 ]; then
  # One BLAS thread per process unless the caller chose otherwise: N processes share the machine's cores.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NUMPROC > 0 ? $(nproc) / NUMPROC : 1 ))}
  launch=(python3 -m torch.distributed.run --standalone --nproc-per-node "$NUMPROC")
fi
exec "${launch[@]}" "$here/run_pretraining_distillation.py" \
  --dataset_name openwebtext_ccnews_stories_books_cased \
  --data="$TRAIN_DATA_DIR" \
  --data_eval="$TEST_DATA_DIR" \
  ${teacher_args[@]+"${teacher_args[@]}"} \
  --distillation_temperature 2.0 \
  --mlm_weight 0.1 \
  --num_steps $NUM_STEPS \
  --lr $LR \
  --batch_size_eval $BS_EVAL \
  --batch_size $BS \
  --accumulate $ACC \
  --num_buckets 20 \
  --use_avg_len \
  --log_interval $LOG_INTERVAL \
  --ckpt_interval $CKPT_INTERVAL \
  --model $MODEL_NAME \
  --ckpt_dir "$DIR_NAME" \
  --dtype $DTYPE \
  ${CPU_ONLY[@]+"${CPU_ONLY[@]}"} "$@"
