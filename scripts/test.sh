#!/usr/bin/env bash
# The whole test suite: the README's second set-up command, and exactly what CI (.ci/run) runs. It installs
# what the suite needs and is missing, then runs pytest in the active Python environment with any arguments
# given (`scripts/test.sh tests/store -x`). It may run while `lastrank serve` holds port 8080: no test binds a
# fixed port.
#
# Besides the Python packages of the `test` extra the suite needs two system programs, and fails (never
# skips) without them:
# - PostgreSQL's server binaries (initdb, pg_ctl): the PostgreSQL store's tests start a throwaway server of
#   their own (tests/support/postgres_server.py); or $LASTRANK_TEST_POSTGRES_URL / $LASTRANK_TEST_PG_BINDIR;
# - Debian's /usr/bin/chromium: the playground's browser tests (tests/e2e) drive it with Playwright, whose
#   own browser download is not used.
# As root (CI, a container) the missing ones are installed with apt-get; otherwise the script prints the one
# command that installs them and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# No model hub is reachable: anything that tries must fail fast, not hang.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

missing=()
if [ -z "${LASTRANK_TEST_POSTGRES_URL:-}${LASTRANK_TEST_PG_BINDIR:-}" ] \
        && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
    missing+=(postgresql-15)
fi
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: the suite needs ${missing[*]}; install with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    apt-get update
    # postgresql-15 is Debian 12's; elsewhere the distribution's current `postgresql` is taken instead.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]/postgresql-15/postgresql}"
fi

# The test extra, installed from this checkout unless every one of its requirements is already met (so a
# second run does not reinstall anything).
if ! python - <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

try:
    import lastrank
    from packaging.requirements import Requirement
except ImportError:
    sys.exit(1)


def met(req: Requirement, extra: str) -> bool:
    """Installed in a version it allows, with the requirements of its own extras (psycopg[binary,pool])."""
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        return True  # not a requirement of this extra, or not on this platform
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            return False
    except PackageNotFoundError:
        return False
    return all(met(Requirement(r), e) for e in req.extras for r in requires(req.name) or [])


if Path(lastrank.__file__).resolve().parents[1] != Path("src").resolve():
    sys.exit(1)  # another copy of lastrank is installed: test this checkout
try:
    needs = requires("lastrank") or []
except PackageNotFoundError:
    sys.exit(1)  # importable (e.g. through PYTHONPATH) but not installed: install it, without a traceback
sys.exit(0 if all(met(Requirement(r), "test") for r in needs) else 1)
PY
then
    python -m pip install -e ".[test]"
fi

# pytest's own exit status: 5 when no test was collected, which fails CI too.
exec python -m pytest "$@"
