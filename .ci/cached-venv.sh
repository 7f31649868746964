# Sourced by nvrtc.sh and replica.sh: cached_venv DIR PIP_ARGS... makes a
# throwaway virtual environment in DIR with PIP_ARGS installed, unless DIR
# already holds a complete one (DIR/.complete). Progress goes to stderr.
cached_venv() {
    local dir=$1
    shift
    [ -f "$dir/.complete" ] && return 0
    echo "installing $* into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet --disable-pip-version-check --no-input "$@" >&2
    touch "$dir/.complete"
}
