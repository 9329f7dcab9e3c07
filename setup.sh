#!/usr/bin/env bash
# Makes this machine ready to train and test: npm dependencies, and a WebGPU adapter.
# When Dawn finds no adapter and apt is available (Debian 12), installs the Vulkan loader
# and Mesa's software driver lavapipe from bookworm-backports: Debian 12's own Mesa 22
# lacks a Vulkan feature Dawn requires, Mesa 25 from backports has it.
# Idempotent: a second run with everything in place only checks and exits.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'setup: %s\n' "$*"; }

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# 1. npm dependencies (skipped when the lock file has not changed since the last install).
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi

# 2. A WebGPU adapter.
probe_adapter() { node scripts/probe-adapter.mjs 2>/dev/null; }

if probe_adapter; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  say "no WebGPU adapter found and apt-get is not available."
  say "install a Vulkan driver (Linux: Mesa >= 24 'lavapipe' or a GPU driver), Metal (macOS) or D3D12 (Windows), then run this script again."
  exit 1
fi

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" != "bookworm" ]; then
  say "no WebGPU adapter found; installing the distribution's Mesa Vulkan drivers ($codename)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1
else
  # Reuse the Debian mirror this machine already uses; never hard-code a host.
  mirror=$(grep -rhoE '(URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)(https?://[^[:space:]]+)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
           | grep -oE 'https?://[^[:space:]]+' | grep -v -e security -e nodesource -e google | head -n 1 || true)
  if [ -z "$mirror" ]; then
    say "no Debian mirror found in /etc/apt/sources.list{,.d}; add one, then run this script again."
    exit 1
  fi
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports from $mirror"
    echo "deb $mirror bookworm-backports main" > "$list"
  fi
  say "installing Mesa Vulkan drivers (lavapipe) from bookworm-backports"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1
fi

if ! node scripts/probe-adapter.mjs; then
  say "still no WebGPU adapter after installing Mesa; see the messages above."
  exit 1
fi
