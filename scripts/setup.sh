#!/usr/bin/env bash
# One-command set-up: .venv/ with ROS 2 (Kilted, PyPI wheels) + PyTorch stack, messages built
# with colcon into build/ and install/, and the environment wired into .venv/bin/activate.
# Idempotent: a second run skips what is already current (pip stamps, colcon's own caching).
#
# Environment: PYTHON (interpreter for the venv, default python3), T2S_SKIP_APT=1 (never apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
PYTHON=${PYTHON:-python3}
cd "$ROOT"
t0=$SECONDS
log() { printf '\n=== [setup %3ss] %s\n' "$((SECONDS - t0))" "$*"; }

# --- 1. system tools: a C/C++ compiler and cmake build the messages; espeak-ng makes the
#        speech tests' audio. Installed with apt where we can, otherwise a clear message.
missing=()
command -v c++ >/dev/null || missing+=(build-essential)
command -v cmake >/dev/null || missing+=(cmake)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
PYINC=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$PYINC/Python.h" ] || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${T2S_SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "warning: apt-get install ${missing[*]} failed" >&2
  else
    echo "note: missing system packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
  fi
fi
for tool in c++ cmake; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required to build the messages" >&2; exit 1; }
done

# --- 2. virtual environment and pinned packages
log "virtual environment $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check -q)
stamp=$VENV/.t2s-requirements.sha256
want=$(cat requirements.txt requirements-model.txt setup.py package.xml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pip install -r requirements.txt (first run: about 3 minutes, 6 GB)"
  "${PIP[@]}" install -r requirements.txt
  "${PIP[@]}" install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  echo "$want" > "$stamp"
else
  log "python packages are current"
fi

# --- 3. the rosidl wheels' CMake exports hard-code the wheel builder's Python paths
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
mapfile -t files < <(grep -l '/opt/python/cp' "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
if [ ${#files[@]} -gt 0 ]; then
  log "fix up ${#files[@]} CMake export file(s)"
  sed -i -E \
    -e "s#/opt/python/cp[0-9]+-cp[0-9]+t?/lib/python3\.[0-9]+t?/site-packages/numpy/(_core|core)/include#$NPINC#g" \
    -e "s#/opt/python/cp[0-9]+-cp[0-9]+t?/include/python3\.[0-9]+t?#$PYINC#g" "${files[@]}"
fi

# --- 4. build the messages (and install scripts, launch/, config/) with colcon
# The venv lives inside this checkout, and CMake refuses exported include paths (numpy's, in
# the venv) under the package's source dir. So colcon builds a staging dir of symlinks to the
# package files instead; apt ROS users build the checkout itself in a normal workspace.
log "colcon build"
STAGE=$ROOT/.colcon-src/talk2sam_ros
mkdir -p "$ROOT/log"
mkdir -p "$STAGE"
for f in CMakeLists.txt package.xml msg talk2sam_ros scripts launch config; do
  ln -sfn "$ROOT/$f" "$STAGE/$f"
done
(
  set +u; source "$VENV/bin/activate"; set -u
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  colcon build --paths "$STAGE" --symlink-install --event-handlers console_cohesion- > "$ROOT/log/colcon-build.out" 2>&1 \
    || { tail -40 "$ROOT/log/colcon-build.out" >&2; echo "colcon build failed: log/colcon-build.out" >&2; exit 1; }
) || exit 1

# --- 5. wire the build into the venv, so `source .venv/bin/activate` is all a user needs
INST=$ROOT/install/talk2sam_ros
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# generated talk2sam_ros.msg (our __init__ extends __path__ into it)
echo "$INST/lib/python$PYVER/site-packages" > "$SITE/talk2sam_ros_install.pth"
# typesupport libraries: ros-wheels-bootstrapper puts $VENV/lib on LD_LIBRARY_PATH, so links
# there make the messages work even from an unactivated .venv/bin/python
for so in "$INST"/lib/lib*.so; do ln -sf "$so" "$VENV/lib/$(basename "$so")"; done
ACT=$VENV/bin/activate
sed -i '/# >>> talk2sam_ros >>>/,/# <<< talk2sam_ros <<</d' "$ACT"
cat >> "$ACT" <<ACTIVATE
# >>> talk2sam_ros >>>  (written by scripts/setup.sh)
export AMENT_PREFIX_PATH="$INST:\$VIRTUAL_ENV"
export CMAKE_PREFIX_PATH="\$VIRTUAL_ENV"
export LD_LIBRARY_PATH="$INST/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# keep DDS discovery on this machine unless the user says otherwise
export ROS_AUTOMATIC_DISCOVERY_RANGE="\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOCALHOST_ONLY="\${ROS_LOCALHOST_ONLY:-1}"
# Fast DDS profile that keeps camera-size frames from being dropped (docs/transport.md);
# a profile the user set already wins
export FASTDDS_DEFAULT_PROFILES_FILE="\${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds_images.xml}"
# <<< talk2sam_ros <<<
ACTIVATE

# --- 6. smoke check
"$PY" -W ignore -c "from talk2sam_ros.msg import TextBoxPrompt, SegmentationResult; import rclpy, torch, timm, open_clip, segment_anything_hq, cv_bridge" \
  || { echo "error: the environment does not import" >&2; exit 1; }
log "done. Use it:  source .venv/bin/activate"
