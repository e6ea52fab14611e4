#!/usr/bin/env bash
# Build the servers the tests run against, from Go modules through the Go
# module proxy, once per machine: each lands in $CERTCTL_TESTSERVERS (default
# /var/cache/certctl-testservers) under <name>-<version>/bin and is never built
# again there. Prints the directory of each, one `name=dir` line per server, on
# stdout; progress goes to stderr. Nothing is downloaded but Go modules.
#
#   kubernetes  kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes)
#   etcd        etcd (go.etcd.io/etcd/server/v3; Debian's 3.4 is too old for kube-apiserver)
#   pebble      pebble, pebble-challtestsrv (github.com/letsencrypt/pebble/v2, the current release)
#   gateway-api the standard-channel CRDs (sigs.k8s.io/gateway-api, config/crd/standard)
#   helm        helm (helm.sh/helm/v3), to lint and render charts/certctl
#   h2spec      h2spec (github.com/summerwind/h2spec), the HTTP/2 conformance suite; its
#               last tag has no go.mod, so its imports resolve to their newest versions
#   cert-manager  cert-manager's controller (github.com/cert-manager/cert-manager), built
#               from cert-manager/main.go next to this script, and its CRDs: B8's peer.
#               Not built by default: only `python -m bench.b8_peer` asks for it
set -euo pipefail

KUBERNETES_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
PEBBLE_VERSION=v2.10.3
GATEWAY_API_VERSION=v1.5.1
HELM_VERSION=v3.22.0
H2SPEC_VERSION=v2.2.1+incompatible
CERT_MANAGER_VERSION=v1.21.2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${CERTCTL_TESTSERVERS:-/var/cache/certctl-testservers}
mkdir -p "$CACHE"
say() { echo "testservers: $*" >&2; }

# A throwaway module that requires $module@$version; the binaries are built
# from it with `go build`, since `go install pkg@version` refuses modules
# whose go.mod has replace directives (k8s.io/kubernetes, etcd). Each package
# is built into bin/ under its last path element, or under the name after `=`.
build() {  # name version module package[=program]...
  local name=$1 version=$2 module=$3; shift 3
  local target="$CACHE/$name-$version"
  if [ -f "$target/.complete" ]; then
    echo "$name=$target"; return
  fi
  say "building $name $version ($module; the first build takes minutes)"
  local started=$SECONDS work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  (
    cd "$work"
    go mod init certctl.test/"$name" >/dev/null 2>&1
    go mod edit -require="$module@$version"
    replaces "$module" "$version"
    # A blank import of each command keeps `go mod tidy` honest about what
    # the build needs (go.sum entries for exactly these packages).
    { echo "//go:build tools"; echo; echo "package tools"; echo; echo "import ("
      for wanted in "$@"; do echo "	_ \"${wanted%%=*}\""; done
      echo ")"; } > tools.go
    GOFLAGS=-mod=mod go mod tidy >&2
    mkdir -p "$target/bin.partial"
    for wanted in "$@"; do
      local package=${wanted%%=*} program=${wanted##*/}
      [[ $wanted == *=* ]] && program=${wanted#*=}
      say "  go build $package"
      CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$target/bin.partial/$program" "$package" >&2
    done
  )
  rm -rf "$target/bin"
  mv "$target/bin.partial" "$target/bin"
  touch "$target/.complete"
  say "built $name $version in $((SECONDS - started)) s"
  echo "$name=$target"
}

# k8s.io/kubernetes requires its staging modules (k8s.io/api, client-go, ...)
# at v0.0.0 and maps them to its own staging/ folder; outside that tree each is
# replaced with the published v0.X.Y of the same release.
replaces() {  # module version
  [ "$1" = k8s.io/kubernetes ] || return 0
  local staging=v0.${2#v1.}
  local gomod
  gomod=$(go mod download -json "$1@$2" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  sed -n 's/^\s*\(k8s\.io\/[a-z0-9-]*\) v0\.0\.0$/\1/p' "$gomod" | while read -r staged; do
    go mod edit -replace="$staged=$staged@$staging"
  done
}

gateway_api() {
  local target="$CACHE/gateway-api-$GATEWAY_API_VERSION"
  if [ ! -f "$target/.complete" ]; then
    say "fetching gateway-api $GATEWAY_API_VERSION CRDs (sigs.k8s.io/gateway-api)"
    local dir
    dir=$(cd "$(mktemp -d)" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
      | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    rm -rf "$target"; mkdir -p "$target/crds"
    cp "$dir"/config/crd/standard/*.yaml "$target/crds/"
    chmod -R u+w "$target"
    touch "$target/.complete"
  fi
  echo "gateway-api=$target"
}

# cert-manager's own main package is in a module the proxy does not serve
# (github.com/cert-manager/cert-manager/cmd/controller): cert-manager/main.go wires its
# controllers as that one does, built against the served module.
cert_manager() {
  # Keyed by main.go's content too: a change to it is a new build.
  local target
  target="$CACHE/cert-manager-$CERT_MANAGER_VERSION-$(sha256sum "$HERE/cert-manager/main.go" | cut -c1-12)"
  if [ ! -f "$target/.complete" ]; then
    say "building cert-manager $CERT_MANAGER_VERSION (github.com/cert-manager/cert-manager; minutes)"
    local started=$SECONDS work dir
    work=$(mktemp -d)
    (
      cd "$work"
      cp "$HERE/cert-manager/main.go" .
      go mod init certctl.test/cert-manager >/dev/null 2>&1
      go mod edit -require="github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION"
      GOFLAGS=-mod=mod go mod tidy >&2
      rm -rf "$target"; mkdir -p "$target/bin" "$target/crds"
      CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$target/bin/cert-manager-controller" . >&2
      dir=$(go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
      cp "$dir"/deploy/crds/*.yaml "$target/crds/"
      chmod -R u+w "$target"
    )
    rm -rf "$work"
    touch "$target/.complete"
    say "built cert-manager $CERT_MANAGER_VERSION in $((SECONDS - started)) s"
  fi
  echo "cert-manager=$target"
}

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(etcd pebble kubernetes gateway-api helm h2spec)
for name in "${wanted[@]}"; do
  case $name in
    kubernetes) build kubernetes "$KUBERNETES_VERSION" k8s.io/kubernetes \
                  k8s.io/kubernetes/cmd/kube-apiserver \
                  k8s.io/kubernetes/cmd/kube-controller-manager \
                  k8s.io/kubernetes/cmd/kubectl ;;
    etcd) build etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3=etcd ;;
    pebble) build pebble "$PEBBLE_VERSION" github.com/letsencrypt/pebble/v2 \
              github.com/letsencrypt/pebble/v2/cmd/pebble \
              github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv ;;
    gateway-api) gateway_api ;;
    helm) build helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm ;;
    h2spec) build h2spec "$H2SPEC_VERSION" github.com/summerwind/h2spec \
              github.com/summerwind/h2spec/cmd/h2spec ;;
    cert-manager) cert_manager ;;
    *) echo "testservers: unknown server '$name'" >&2; exit 2 ;;
  esac
done
