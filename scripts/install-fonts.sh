#!/usr/bin/env bash
# Installs the handwriting fonts listed in train/fonts.tsv from Debian's packages (needs root and apt); the PyPI font
# packages of that list (pypi: rows) come with pip install '.[export]'.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=$(grep -v '^#' train/fonts.tsv | tail -n +2 | cut -f1 | grep -v '^pypi:' | sort -u)
missing=$(for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ] && [ "$(id -u)" != 0 ]; then
  echo "install-fonts: not root; install these Debian packages yourself: $missing (tests that need them will skip)" >&2
  exit 0
fi
if [ -n "$missing" ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; }; then
    echo "install-fonts: apt-get could not install $missing; tests that need these fonts will skip" >&2
  fi
fi
