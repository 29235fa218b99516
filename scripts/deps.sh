#!/usr/bin/env bash
# Install the Debian 12 packages vdisk needs to build, test and demo.
# Idempotent: asks dpkg first and only runs apt-get (update + install) when
# something is missing. Must run as root when something is missing.
set -euo pipefail

PKGS=(
	build-essential meson ninja-build pkg-config
	liburing-dev libxen-dev xenstore-utils libcmocka-dev zlib1g-dev
	clang libclang-rt-14-dev
	qemu-utils fio libnbd-bin nbdkit libgnutls28-dev gnutls-bin
	clang-format clang-tidy cppcheck
	python3 procps util-linux
)

missing=()
for p in "${PKGS[@]}"; do
	st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	if [ "$st" != "installed" ]; then
		missing+=("$p")
	fi
done

if [ "${#missing[@]}" -eq 0 ]; then
	echo "deps: all ${#PKGS[@]} packages present"
	exit 0
fi

echo "deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		echo "deps: missing packages and not root: ${missing[*]}" >&2
		exit 1
	fi
else
	SUDO=()
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	"${missing[@]}" </dev/null
echo "deps: done"
