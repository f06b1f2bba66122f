#!/usr/bin/env bash
# The main job, step by step, in a throwaway home under ./.forgetctl-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
export FORGETCTL_HOME="${FORGETCTL_HOME:-$PWD/.forgetctl-demo}"
F=.venv/bin/forgetctl
$F init
$F request import examples/batch/requests.jsonl
$F request list
$F ledger verify
