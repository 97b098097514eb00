#!/usr/bin/env bash
# Installs what building and testing clip-cluster needs on a fresh Debian machine with Rust.
# Idempotent: a second run finds everything in place and returns quickly.
set -euo pipefail

need_apt=()
# cmake + curl headers: librdkafka's bundled build (rdkafka's cmake-build feature; the curl
# headers are needed even with curl off). prometheus: promtool, which checks our metrics
# exposition and alert rules in the tests. chromium: the review page's tests drive it headless.
for pkg in cmake libcurl4-openssl-dev prometheus chromium "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# dlib's face-recognition ResNet, 5-point landmark model and MMOD face detector (PyPI face-recognition-models, by name
# with pip; SHA-256 checked) into <repo>/models, which the embedder and its golden tests read.
command -v pip3 >/dev/null || command -v pip >/dev/null || {
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-pip
}
"$(dirname "${BASH_SOURCE[0]}")/dlib/fetch_models.sh"
# CLIP's BPE vocabulary (PyPI open-clip-torch, by name with pip; SHA-256 checked) into <repo>/models.
"$(dirname "${BASH_SOURCE[0]}")/clip/fetch_vocab.sh"
