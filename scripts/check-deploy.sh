#!/usr/bin/env bash
# Validates the deployment files with the tools their platforms use,
# without a cluster or a container engine:
#   - deploy/prometheus/alerts.yml and prometheus.yml with promtool
#     (Debian package `prometheus`);
#   - deploy/kubernetes/*.yaml against the Kubernetes API schemas with
#     kubernetes-validate (PyPI), strict mode, and the kustomization with
#     `kubectl kustomize` when kubectl is installed;
#   - docker-compose.yml with `docker compose config` or `docker-compose config`.
# A missing tool is reported and its check skipped; the exit code is 1 when
# a check that ran failed.
set -u
cd "$(dirname "$0")/.."

failed=0
skipped=()

run() {
    local name=$1
    shift
    echo "== $name"
    if ! "$@"; then
        echo "FAILED: $name"
        failed=1
    fi
}

if command -v promtool >/dev/null; then
    run "alert rules" promtool check rules deploy/prometheus/alerts.yml
    # prometheus.yml names the rule file by its path inside the container.
    scratch=$(mktemp -d)
    cp deploy/prometheus/alerts.yml "$scratch/alerts.yml"
    sed "s#/etc/prometheus/alerts.yml#$scratch/alerts.yml#" \
        deploy/prometheus/prometheus.yml >"$scratch/prometheus.yml"
    run "prometheus config" promtool check config "$scratch/prometheus.yml"
    rm -rf "$scratch"
else
    skipped+=("promtool (apt-get install -y prometheus)")
fi

if command -v kubernetes-validate >/dev/null; then
    manifests=()
    for file in deploy/kubernetes/*.yaml; do
        [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
    done
    run "kubernetes manifests" kubernetes-validate --strict "${manifests[@]}"
else
    skipped+=("kubernetes-validate (pip install kubernetes-validate)")
fi
if command -v kubectl >/dev/null; then
    run "kustomization" sh -c 'kubectl kustomize deploy/kubernetes >/dev/null'
else
    skipped+=("kubectl")
fi

if docker compose version >/dev/null 2>&1; then
    run "compose file" docker compose -f docker-compose.yml config -q
elif command -v docker-compose >/dev/null; then
    run "compose file" docker-compose -f docker-compose.yml config -q
else
    skipped+=("docker compose or docker-compose")
fi

for tool in "${skipped[@]}"; do
    echo "skipped: $tool is not installed"
done
exit $failed
