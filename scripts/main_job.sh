#!/usr/bin/env bash
# README's main job, end to end on the built-in scenes benchmark:
#   set up -> generate scenes -> train -> precompute the test split -> build first stages
#   -> evaluate on the test split (recall table, sample queries) -> how to serve.
# Every step resumes or skips when its output is already complete, so rerunning is cheap.
#
#   RUN_DIR=DIR          holds data/, model/, index/ and eval/ (default runs/scenes)
#   MAIN_JOB_SIZE=tiny   the same commands at toy sizes (tests/test_main_job.py runs it in CI):
#                        264 scenes, train/configs/tiny.py for 6 steps, 100 evaluation queries;
#                        a few minutes from scratch, numbers near chance (default: full)
#   LATEINT_SKIP_SETUP=1 use the virtualenv at LATEINT_VENV (default .venv) as it is
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
run_dir="${RUN_DIR:-runs/scenes}"
case "${MAIN_JOB_SIZE:-full}" in
  full)
    scenes_sizes=(--num_train=5000 --num_dev=1000 --num_test=1000 --seed=0)
    train_config=train/configs/scenes_relations.py
    train_sizes=()
    exhaustive_queries=100
    evaluate_sizes=()
    ;;
  tiny)
    scenes_sizes=(--num_train=64 --num_dev=24 --num_test=200 --seed=5 --encoder_steps=40)
    train_config=train/configs/tiny.py
    train_sizes=(--config.num_steps=6 --config.eval_every=100)
    exhaustive_queries=10
    evaluate_sizes=(--max_queries=100 --max_exhaustive_pairs=2000 --latency_queries=1 --n=64
      --K=16)
    ;;
  *)
    echo "main_job.sh: MAIN_JOB_SIZE: expected 'full' or 'tiny', got '$MAIN_JOB_SIZE'" >&2
    exit 2
    ;;
esac
started=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - started ))s] $*"; }

step "1/6 set up the virtualenv"
if [ "${LATEINT_SKIP_SETUP:-0}" = 1 ]; then
  echo "skipped (LATEINT_SKIP_SETUP=1)"
else
  bash scripts/setup.sh
fi
python="${LATEINT_VENV:-$repo/.venv}/bin/python"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

step "2/6 generate the scenes benchmark into $run_dir/data"
if [ -f "$run_dir/data/scenes_info.json" ]; then
  echo "already generated"
else
  "$python" -m lateint.data.scenes --out="$run_dir/data" "${scenes_sizes[@]}"
fi

step "3/6 train $train_config into $run_dir/model (resumes)"
if [ -f "$run_dir/model/dev_recall.json" ]; then
  echo "already trained"
else
  "$python" -m lateint.train.main --config="$train_config" --workdir="$run_dir/model" \
    --config.data.path="$run_dir/data" ${train_sizes[@]+"${train_sizes[@]}"}
fi

step "4/6 precompute the test split into $run_dir/index (resumes; no-op when complete)"
"$python" -m lateint.index.precompute --workdir="$run_dir/model" --data="$run_dir/data" --split=test \
  --index="$run_dir/index" --storage=bfloat16

step "5/6 build the first stages (concepts; exact = the reference, whose vectors refined reads)"
"$python" -m lateint.index.build --index="$run_dir/index" --first_stage=concepts,exact

step "6/6 evaluate on the test split (5 scorers; the exhaustive cross-encoder on" \
  "$exhaustive_queries queries)"
"$python" -m lateint.evaluation.main --workdir="$run_dir/model" --index="$run_dir/index" \
  --data="$run_dir/data" --split=test --out="$run_dir/eval" --sample_queries=2 \
  --max_exhaustive_queries="$exhaustive_queries" --first_stages=refined,exact \
  ${evaluate_sizes[@]+"${evaluate_sizes[@]}"}
echo "(full tables: $run_dir/eval/results.md, or rerun with --full_tables; the other first"
echo " stages: lateint.index.build --first_stage=sq,permutation, then lateint.evaluation.main without --first_stages)"

echo
echo "done in $(( $(date +%s) - started ))s. Model: $run_dir/model, INDEX: $run_dir/index."
echo "Serve this index with:"
echo "  $python -m lateint.serve.main --workdir=$run_dir/model --index=$run_dir/index --port=8080"
echo "then open http://127.0.0.1:8080/ (demo page) or POST http://127.0.0.1:8080/search"
