#!/usr/bin/env bash
# The one command that runs every test in the workspace (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --all-targets "$@"
