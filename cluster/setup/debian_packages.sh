#!/bin/sh
# Installs the Debian packages the project needs when their commands are missing.
#   DEBS      "command:package ..." pairs to install when the command is missing
#   REQUIRED  the subset whose absence stops set-up (the others are reported and skipped)
# As root, missing packages are installed with apt-get; otherwise this says what to install.
set -u
missing=""
for pair in $DEBS; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null && exit 0
    echo "apt-get could not install:$missing" >&2
fi
still=""
for pair in $REQUIRED; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || still="$still $pkg"
done
if [ -n "$still" ]; then
    echo "missing required Debian packages:$still" >&2
    echo "install them with: sudo apt-get install$still" >&2
    exit 1
fi
echo "note: optional Debian packages not installed:$missing (tests that need them are skipped)" >&2
exit 0
