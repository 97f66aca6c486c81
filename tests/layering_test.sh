#!/usr/bin/env bash
# The stages' order in every BUILD label and #include of model/, moe/, convert/, train/, eval/.
# First the checker must catch a planted violation, so that a broken checker cannot pass.
set -euo pipefail
checker="$1"
shift
python3 "$checker" --self_test
python3 "$checker" "$@"
