#!/usr/bin/env bash
# The test command: the whole pytest suite inside .venv with ROS 2 kept on loopback.
# Extra arguments go to pytest (e.g. scripts/test.sh -k node -x).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -f .venv/bin/activate ] || { echo "no .venv: run ./scripts/setup.sh first" >&2; exit 1; }
set +u; source .venv/bin/activate; set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1
# the shipped Fast DDS profile for images (docs/transport.md), whatever the shell had
# (the Fast DDS 2 variable only adds a deprecation warning to every log on Kilted)
export FASTDDS_DEFAULT_PROFILES_FILE=$ROOT/config/fastdds_images.xml
unset FASTRTPS_DEFAULT_PROFILES_FILE
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}
export PYTHONUNBUFFERED=1
python -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests (exit 5)"; exit 5
fi
exit "$rc"
