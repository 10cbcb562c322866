#!/usr/bin/env bash
# Installs what is missing, then runs every test: pure tests, kernel tests (root; they
# include the wheel smoke: the wheel installed in a throwaway venv, run from another
# directory, the example project's tests with the pytest plugin), linters, the import
# layers (import-linter contracts in pyproject.toml) and the Vagrantfile check; then the
# rootless pass: the kernel tests marked `rootless` again as an unprivileged user.
# Extra arguments go to pytest (both passes).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev --adapters || exit 1

status=0
.venv/bin/ruff check testbed peers tests bench scripts examples || status=1
.venv/bin/mypy testbed peers || status=1
.venv/bin/lint-imports --no-cache --no-logo || status=1
# Provider blocks are skipped: a CI machine has vagrant but no hypervisor plugin, and
# without --ignore-provider validate fails there for want of a usable provider.
vagrant validate --ignore-provider || status=1
# Two passes at once: the kernel tests in front, the pure ones (rendering, parsing,
# codecs, models, docs) beside them at the lowest CPU priority. The kernel pass mostly
# waits (timeouts, peers, daemons: about a third of two CPUs), so the pure pass costs it
# little, and its timing-critical parts run at real-time priority anyway
# (docs/conditions.md). One pass collecting nothing is fine (a selection of the
# caller's own); both collecting nothing is a failure.
pure_log=$(mktemp /tmp/nat-testbed-pure.XXXXXX)
nice -n 19 .venv/bin/python -m pytest -m "not kernel" -p no:cacheprovider "$@" \
  >"$pure_log" 2>&1 &
pure_pid=$!
trap 'kill "$pure_pid" 2>/dev/null; rm -f "$pure_log"' EXIT
.venv/bin/python -m pytest -m kernel "$@"
rc=$?
wait "$pure_pid"
pure_rc=$?
echo "test.sh: the pure tests (beside the kernel tests):"
cat "$pure_log"
rm -f "$pure_log"
trap - EXIT
if [[ $rc -eq 5 && $pure_rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  rc=1
elif [[ $rc -eq 5 || $rc -eq 0 ]]; then
  rc=$pure_rc
  [[ $rc -eq 5 ]] && rc=0
fi
[[ $rc -ne 0 ]] && status=$rc

# The rootless pass: the kernel tests marked `rootless` (lab lifecycle, classify, pair,
# matrix) again, as an unprivileged user made for it, every command inside a user
# namespace of the tool's own (testbed.rootless). The root namespace is compared before
# and after it, as the first pass's fixture does for itself.
ROOTLESS_USER=nat-testbed-ci
rootless_pass() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: the rootless pass runs as $ROOTLESS_USER, made by root: skipped" >&2
    return 0
  fi
  id -u "$ROOTLESS_USER" >/dev/null 2>&1 || useradd --system --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin "$ROOTLESS_USER" || return 1
  local tree=$PWD tmp=""
  if ! runuser -u "$ROOTLESS_USER" -- test -r pyproject.toml -a -x .venv/bin/python; then
    # A checkout the user cannot read (under /root, say), or a venv on a Python of
    # root's own: the pass runs from a readable copy with a venv of its own.
    tmp=$(mktemp -d /var/tmp/nat-testbed-rootless.XXXXXX) && chmod 755 "$tmp" || return 1
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$tmp" -xf -
    local py=python3
    [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
    "$py" -m venv "$tmp/.venv" && "$tmp/.venv/bin/python" -m pip install -q -e "$tmp[test]" \
      >/dev/null || { rm -rf "$tmp"; return 1; }
    tree=$tmp
  fi
  # The user's session, state and pytest's temporary files live in a folder of this
  # pass (its XDG_RUNTIME_DIR and TMPDIR), removed once the session's holder has left:
  # the user stays (made once, idempotent), nothing else of the pass does.
  local run
  run=$(mktemp -d /tmp/nat-testbed-ci-run.XXXXXX) && chown "$ROOTLESS_USER:" "$run" \
    && chmod 700 "$run" || { [[ -n $tmp ]] && rm -rf "$tmp"; return 1; }
  local snap='import json, sys; sys.path.insert(0, "tests"); import conftest
print(json.dumps(conftest.root_namespace_snapshot(), sort_keys=True))'
  local before after rc
  before=$(.venv/bin/python -c "$snap")
  (cd "$tree" && runuser -u "$ROOTLESS_USER" -- env NAT_TESTBED_ROOTLESS_PASS=1 \
     XDG_RUNTIME_DIR="$run" TMPDIR="$run" PYTHONDONTWRITEBYTECODE=1 \
     .venv/bin/python -m pytest -m rootless -p no:cacheprovider "$@")
  rc=$?
  after=$(.venv/bin/python -c "$snap")
  [[ -n $tmp ]] && rm -rf "$tmp"
  local waited=0  # the holder leaves within 2 s of its session's last process
  while [[ -e $run/nat-testbed/session.json ]] && (( waited < 30 )); do
    sleep 0.5
    waited=$((waited + 1))
  done
  if [[ -e $run/nat-testbed/session.json ]]; then
    echo "test.sh: the rootless pass left its session running (labs in $run/nat-testbed/state?)" >&2
    rc=1
  else
    rm -rf "$run"
  fi
  if [[ $rc -eq 5 && $# -gt 0 ]]; then
    rc=0  # a selection of the caller's own with no rootless test in it
  elif [[ $rc -eq 5 ]]; then
    echo "test.sh: the rootless pass collected no tests: that is a failure" >&2
    rc=1
  fi
  if [[ $before != "$after" ]]; then
    echo "test.sh: the rootless pass changed the root namespace" >&2
    rc=1
  fi
  return $rc
}
echo "test.sh: the rootless pass, as $ROOTLESS_USER"
started=$SECONDS
rootless_pass "$@" || status=1
echo "test.sh: the rootless pass took $((SECONDS - started)) s"
exit $status
