#!/usr/bin/env bash
# README's main job, end to end on the built-in scenes benchmark:
#   set up -> generate scenes -> train -> precompute the test split -> build first stages
#   -> evaluate on the test split (recall table, sample queries) -> how to serve.
# Every step resumes or skips when its output is already complete, so rerunning is cheap.
# RUN_DIR (default runs/scenes) holds data/, model/, index/ and eval/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
run_dir="${RUN_DIR:-runs/scenes}"
started=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - started ))s] $*"; }

step "1/6 set up the virtualenv"
bash scripts/setup.sh
python="${LATEINT_VENV:-$repo/.venv}/bin/python"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

step "2/6 generate the scenes benchmark into $run_dir/data"
if [ -f "$run_dir/data/scenes_info.json" ]; then
  echo "already generated"
else
  "$python" -m lateint.data.scenes --out="$run_dir/data" --num_train=5000 --num_dev=1000 \
    --num_test=1000 --seed=0
fi

step "3/6 train train/configs/scenes_relations.py into $run_dir/model (resumes)"
if [ -f "$run_dir/model/dev_recall.json" ]; then
  echo "already trained"
else
  "$python" -m train.main --config=train/configs/scenes_relations.py --workdir="$run_dir/model" \
    --config.data.path="$run_dir/data"
fi

step "4/6 precompute the test split into $run_dir/index (resumes; no-op when complete)"
"$python" -m index.precompute --workdir="$run_dir/model" --data="$run_dir/data" --split=test \
  --index="$run_dir/index" --storage=bfloat16

step "5/6 build the first stages (concepts = the default; exact = its reference)"
"$python" -m index.build --index="$run_dir/index" --first_stage=concepts,exact

step "6/6 evaluate on the test split (5 scorers; the exhaustive cross-encoder on 100 queries)"
"$python" -m serve.evaluate --workdir="$run_dir/model" --index="$run_dir/index" \
  --data="$run_dir/data" --split=test --out="$run_dir/eval" --sample_queries=2 \
  --max_exhaustive_queries=100 --first_stages=concepts,exact
echo "(full tables: $run_dir/eval/results.md, or rerun with --full_tables; the other first"
echo " stages: index.build --first_stage=sq,permutation, then serve.evaluate without --first_stages)"

echo
echo "done in $(( $(date +%s) - started ))s. Model: $run_dir/model, INDEX: $run_dir/index."
echo "Serve this index with:"
echo "  $python -m serve.main --workdir=$run_dir/model --index=$run_dir/index --port=8080"
echo "then open http://127.0.0.1:8080/ (demo page) or POST http://127.0.0.1:8080/search"
