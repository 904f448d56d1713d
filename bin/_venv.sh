# Sourced by bin/dev and bin/test: creates .venv from requirements.txt when it is missing, and
# reinstalls when requirements.txt or a file it includes (requirements/*.txt) is newer than the last install.
ensure_venv() {
    local who=$1
    local stamp=.venv/.requirements-installed
    mkdir -p .venv
    # Two runs starting at once (CI, a second terminal) must not pip-install into .venv together.
    if command -v flock >/dev/null; then
        exec 9>.venv/.bootstrap.lock
        flock 9
    fi
    if [[ ! -x .venv/bin/python ]]; then
        echo "$who: creating .venv with $("${PYTHON:-python3}" --version 2>&1)" >&2
        "${PYTHON:-python3}" -m venv .venv || {
            echo "$who: 'python3 -m venv' failed; on Debian/Ubuntu install python3-venv." >&2
            exit 1
        }
    fi
    local stale=0 file
    for file in requirements.txt requirements/*.txt; do
        [[ -f $stamp && ! $file -nt $stamp ]] || stale=1
    done
    if ((stale)); then
        echo "$who: installing requirements.txt into .venv" >&2
        .venv/bin/python -m pip install --disable-pip-version-check --quiet -r requirements.txt
        touch "$stamp"
    fi
    if command -v flock >/dev/null; then
        exec 9>&-
    fi
}
