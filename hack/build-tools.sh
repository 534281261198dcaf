#!/usr/bin/env bash
# build-tools.sh builds the binaries jobrun's tests and dev command need, from
# Go modules only (no download site is reachable here), into bin/ (git-ignored):
#
#   bin/k8s/{kube-apiserver,kubectl,kube-controller-manager,kube-scheduler,etcd}
#       the control plane; bin/k8s is what KUBEBUILDER_ASSETS points at.
#   bin/k8s/{kubelet,kube-proxy}
#       a real node (the `node` set, internal/realnode's test); with root and
#       apt-get, the `node` set also installs Debian's containerd, runc,
#       containernetworking-plugins and iptables when they are missing.
#   bin/controller-gen, bin/helm
#   bin/kueue/kueue, bin/kueue/crds/, bin/kueue/webhook/manifests.yaml
#       Kueue's manager, CRDs and webhook configurations (the `kueue` set,
#       internal/kueuetest), from the hack/kueue module
#   bin/crds/  third-party CRDs the chart's tests validate against (the
#       Prometheus Operator's ServiceMonitor), taken from its Go module
#
# The `postgres` set is not built: it makes sure the distribution's PostgreSQL
# server binaries (initdb, pg_ctl, postgres) are there, for make dev's archive
# and the tests' throwaway databases (internal/pgserver, which internal/pgtest
# and internal/localcluster use). It looks where internal/pgserver looks
# ($JOBRUN_PG_BINDIR, /usr/lib/postgresql/<newest version>/bin, /usr/local/bin,
# PATH); when they are missing it installs Debian's postgresql package as root
# with apt-get (without starting its service), else says what to install and
# fails.
#
# A binary is rebuilt only when the recipe that made it changed: each one has a
# stamp file holding the hash of its inputs (versions, the tools module's go.sum).
# Built binaries are also kept, by that hash, in $JOBRUN_TOOLS_CACHE (default
# ~/.cache/jobrun/tools), so a fresh clone on the same machine (CI) links them
# in instead of rebuilding; Go's own build cache makes a rebuild take ~2 min
# instead of ~10.
#
# Usage: hack/build-tools.sh [all|dev|node|NAME...]
#   dev:  what `make dev` needs: the control plane and controller-gen
#   node: kubelet, kube-proxy and the Debian packages of a real node
#   all:  dev + helm + crds + kueue + node (what `make test` needs, with postgres)
#   kueue: Kueue's manager, CRDs and webhook configurations (make tools-kueue)
#   postgres: the PostgreSQL server binaries (make tools-pg)
#   browser: a headless Chromium for the console's browser test (make
#       tools-browser): found on PATH (chromium, chromium-browser), else
#       Debian's chromium package installed as root, else what to install
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
k8s="$bin/k8s"
stamps="$bin/.stamps"
cache="${JOBRUN_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jobrun/tools}"
mkdir -p "$k8s" "$stamps" "$cache"

K8S_VERSION=v1.37.2
K8S_MINOR=37
CONTROLLER_GEN_VERSION=v0.23.0
HELM_VERSION=v3.22.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0

# Version stamps: without them kubectl cannot parse the server's version and
# `kubectl version` exits 1.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
done

log() { printf '[build-tools] %s\n' "$*" >&2; }

# fresh NAME OUT INPUTS... succeeds when OUT exists and was built from INPUTS,
# taking it from the cache when it was built there before.
fresh() {
	local name=$1 out=$2
	shift 2
	local want
	want=$(printf '%s\n' "$@" "$(go env GOVERSION)" | sha256sum | cut -d' ' -f1)
	echo "$want" >"$stamps/$name.want"
	if [[ -x $out && -f $stamps/$name && $(cat "$stamps/$name") == "$want" ]]; then
		return 0
	fi
	if [[ -x $cache/$want/$name ]]; then
		log "using cached $name ($cache/$want)"
		cp -f "$cache/$want/$name" "$out"
		mv "$stamps/$name.want" "$stamps/$name"
		return 0
	fi
	return 1
}

# done_building NAME OUT records that OUT is fresh and keeps a copy in the cache.
done_building() {
	local name=$1 out=$2 want
	want=$(cat "$stamps/$name.want")
	mkdir -p "$cache/$want"
	cp -f "$out" "$cache/$want/$name.tmp" && mv -f "$cache/$want/$name.tmp" "$cache/$want/$name"
	mv "$stamps/$name.want" "$stamps/$name"
}

build_k8s() {
	local name=$1
	local out="$k8s/$name"
	if fresh "$name" "$out" "$K8S_VERSION" "$ldflags" "$(cat "$root/hack/tools/go.sum")"; then
		return
	fi
	log "building $name $K8S_VERSION from k8s.io/kubernetes (cold: kube-apiserver ~6 min, the others 1-2 min)"
	local start=$SECONDS
	(cd "$root/hack/tools" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" "k8s.io/kubernetes/cmd/$name")
	done_building "$name" "$out"
	log "built $name in $((SECONDS - start))s"
}

build_etcd() {
	local out="$k8s/etcd"
	if fresh etcd "$out" "$(cat "$root/hack/tools/etcd/go.sum" "$root/hack/tools/etcd/main.go")"; then
		return
	fi
	log "building etcd from go.etcd.io/etcd/server/v3"
	local start=$SECONDS
	(cd "$root/hack/tools/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" .)
	done_building etcd "$out"
	log "built etcd in $((SECONDS - start))s"
}

# build_kueue builds Kueue's manager (sigs.k8s.io/kueue/cmd/kueue, pinned in
# the hack/kueue module) into bin/kueue/kueue and copies, from the same module,
# its CRDs into bin/kueue/crds/ and its webhook configurations into
# bin/kueue/webhook/manifests.yaml (internal/kueuetest installs them, with the
# webhooks pointed at the manager on loopback). cmd/kueue is one file,
# main.go, which reads the metrics server's certificate from a hard-coded
# /etc/kueue/metrics/certs when internalCertManagement is off, and exits when
# it is missing, as it is outside a cluster. So the command is built from a
# copy of that main.go in hack/kueue/_build/kueue (git-ignored), with the path
# replaced by a -metrics-cert-dir flag (hack/kueue/metrics_cert_dir.go.in).
# Likewise the visibility server (VisibilityOnDemand, on by default) reads its
# certificate from /visibility/tls.{crt,key} and exits when missing: the link
# sets that directory to "visibility", relative to the manager's working
# directory.
# (go build -overlay would be tidier but refuses to replace files in the
# module cache.)
build_kueue() {
	local out="$bin/kueue/kueue"
	local kdir="$root/hack/kueue"
	mkdir -p "$bin/kueue"
	if ! fresh kueue "$out" "$(cat "$kdir/go.mod" "$kdir/go.sum" "$kdir/metrics_cert_dir.go.in")" "metrics-cert-dir patch v1, visibility certDir"; then
		log "building kueue from sigs.k8s.io/kueue (cold: ~3 min)"
		local start=$SECONDS dir version src="$kdir/_build/kueue"
		dir=$(cd "$kdir" && go mod download -json sigs.k8s.io/kueue | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		version=$(cd "$kdir" && go list -m -f '{{.Version}}' sigs.k8s.io/kueue)
		rm -rf "$src"
		mkdir -p "$src"
		sed 's|metricsCertPath := "/etc/kueue/metrics/certs"|metricsCertPath := *jobrunMetricsCertDir|' "$dir/cmd/kueue/main.go" >"$src/main.go"
		if ! grep -q 'metricsCertPath := \*jobrunMetricsCertDir' "$src/main.go"; then
			log "kueue: $dir/cmd/kueue/main.go no longer has the line to patch (metricsCertPath := \"/etc/kueue/metrics/certs\"); update hack/build-tools.sh"
			exit 1
		fi
		cp "$kdir/metrics_cert_dir.go.in" "$src/metrics_cert_dir.go"
		(cd "$kdir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version -X sigs.k8s.io/kueue/pkg/visibility.certDir=visibility" -o "$out" ./_build/kueue)
		done_building kueue "$out"
		log "built kueue in $((SECONDS - start))s"
	fi
	kueue_manifests
}

# kueue_manifests copies Kueue's CRDs and webhook configurations out of its
# module (the version hack/kueue/go.mod requires).
kueue_manifests() {
	local kdir="$root/hack/kueue" stamp="$stamps/kueue-manifests" version dir
	version=$(cd "$kdir" && go list -m -f '{{.Version}}' sigs.k8s.io/kueue)
	if [[ -d $bin/kueue/crds && -f $bin/kueue/webhook/manifests.yaml && -f $stamp && $(cat "$stamp") == "$version" ]]; then
		return
	fi
	dir=$(cd "$kdir" && go mod download -json sigs.k8s.io/kueue | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	rm -rf "$bin/kueue/crds" "$bin/kueue/webhook"
	mkdir -p "$bin/kueue/crds" "$bin/kueue/webhook"
	cp -f "$dir"/config/components/crd/bases/*.yaml "$bin/kueue/crds/"
	cp -f "$dir/config/components/webhook/manifests.yaml" "$bin/kueue/webhook/manifests.yaml"
	chmod -R u+w "$bin/kueue/crds" "$bin/kueue/webhook"
	echo "$version" >"$stamp"
}

go_install() {
	local name=$1 pkg=$2 version=$3
	local out="$bin/$name"
	if fresh "$name" "$out" "$pkg@$version"; then
		return
	fi
	log "installing $name $version"
	local start=$SECONDS
	GOBIN="$bin" CGO_ENABLED=0 go install -trimpath "$pkg@$version"
	done_building "$name" "$out"
	log "installed $name in $((SECONDS - start))s"
}

# third_party_crds copies the ServiceMonitor CRD out of the Prometheus
# Operator's module (the module zip holds its example manifests).
third_party_crds() {
	local out="$bin/crds/monitoring.coreos.com_servicemonitors.yaml"
	local stamp="$stamps/crds"
	if [[ -f $out && -f $stamp && $(cat "$stamp") == "$PROMETHEUS_OPERATOR_VERSION" ]]; then
		return
	fi
	log "fetching the ServiceMonitor CRD from github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
	local dir
	dir=$(cd "$root" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	mkdir -p "$bin/crds"
	cp -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$out"
	chmod u+w "$out"
	echo "$PROMETHEUS_OPERATOR_VERSION" >"$stamp"
}

# node_packages installs what a real node needs beside kubelet and kube-proxy
# from Debian (~20 s) when a command is missing: only as root with apt-get;
# otherwise it says what is missing and goes on (the real-node test then
# skips with the same message).
node_packages() {
	local missing=()
	command -v containerd >/dev/null || missing+=(containerd)
	command -v runc >/dev/null || missing+=(runc)
	[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
	command -v iptables >/dev/null || missing+=(iptables)
	if ((${#missing[@]} == 0)); then
		return
	fi
	if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
		log "a real node needs the Debian packages ${missing[*]}: not root or no apt-get, so not installed (the real-node test will skip); install them with: apt-get install -y ${missing[*]}"
		return
	fi
	log "installing ${missing[*]} with apt-get"
	local start=$SECONDS
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
	log "installed ${missing[*]} in $((SECONDS - start))s"
}

# pg_bindir prints the directory that holds initdb, pg_ctl and postgres, in
# internal/pgserver's order (FindBinaries); it fails when none does.
pg_bindir() {
	local dirs=() d
	if [[ -n ${JOBRUN_PG_BINDIR:-} ]]; then
		dirs=("$JOBRUN_PG_BINDIR")
	else
		# Newest major version first.
		while read -r d; do dirs+=("$d"); done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -rn)
		dirs+=(/usr/local/bin)
		IFS=: read -ra d <<<"$PATH"
		dirs+=("${d[@]}")
	fi
	for d in "${dirs[@]}"; do
		if [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
			echo "$d"
			return 0
		fi
	done
	return 1
}

# postgres_binaries installs Debian's PostgreSQL server (~20-40 s) when
# pg_bindir finds none: only as root with apt-get, and without starting the
# package's own cluster (a policy-rc.d that refuses service starts, unless the
# machine already has one). Otherwise it says what to install and fails: the
# tests that need PostgreSQL cannot run without it.
postgres_binaries() {
	local dir
	if dir=$(pg_bindir); then
		return
	fi
	if [[ -n ${JOBRUN_PG_BINDIR:-} ]]; then
		log "JOBRUN_PG_BINDIR=$JOBRUN_PG_BINDIR lacks initdb, pg_ctl or postgres: point it at a PostgreSQL server's bin directory, or unset it"
		exit 1
	fi
	if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
		log "make dev and the tests need PostgreSQL's server binaries (initdb, pg_ctl, postgres), not found in /usr/lib/postgresql/*/bin, /usr/local/bin or PATH; not root or no apt-get, so not installed. Install them with: sudo apt-get install -y postgresql (Debian, Ubuntu), or set JOBRUN_PG_BINDIR to the bin directory of a PostgreSQL server"
		exit 1
	fi
	log "installing postgresql with apt-get (its service not started)"
	local start=$SECONDS own_policy=
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		own_policy=1
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
	if [[ -n $own_policy ]]; then
		rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
	if ! dir=$(pg_bindir); then
		log "installed postgresql, but still found no initdb, pg_ctl and postgres in /usr/lib/postgresql/*/bin, /usr/local/bin or PATH"
		exit 1
	fi
	log "installed postgresql ($dir) in $((SECONDS - start))s"
}

# browser finds Chromium for the console's browser test (apiserver,
# TestConsoleInBrowser, driven by chromedp), or installs Debian's chromium
# package (~1-2 min) as root with apt-get; otherwise it says what to install
# and fails.
browser() {
	local b
	for b in chromium chromium-browser; do
		if command -v "$b" >/dev/null; then
			return
		fi
	done
	if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
		log "the console's browser test needs Chromium (chromium or chromium-browser on PATH); not root or no apt-get, so not installed. Install it with: sudo apt-get install -y chromium (Debian), sudo apt-get install -y chromium-browser (Ubuntu)"
		exit 1
	fi
	log "installing chromium with apt-get"
	local start=$SECONDS
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null ||
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
	if ! command -v chromium >/dev/null; then
		log "installed chromium, but found no chromium on PATH"
		exit 1
	fi
	log "installed chromium in $((SECONDS - start))s"
}

build() {
	case $1 in
	postgres) postgres_binaries ;;
	browser) browser ;;
	crds) third_party_crds ;;
	kube-apiserver | kubectl | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) build_k8s "$1" ;;
	node-packages) node_packages ;;
	etcd) build_etcd ;;
	kueue) build_kueue ;;
	controller-gen) go_install controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_GEN_VERSION" ;;
	helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;
	*)
		log "unknown tool: $1"
		exit 2
		;;
	esac
}

dev_tools=(controller-gen etcd kube-apiserver kubectl kube-controller-manager kube-scheduler)
node_tools=(kubelet kube-proxy node-packages)
all_tools=("${dev_tools[@]}" helm crds kueue "${node_tools[@]}")

targets=()
for arg in "${@:-all}"; do
	case $arg in
	dev) targets+=("${dev_tools[@]}") ;;
	node) targets+=("${node_tools[@]}") ;;
	all) targets+=("${all_tools[@]}") ;;
	*) targets+=("$arg") ;;
	esac
done
for t in "${targets[@]}"; do
	build "$t"
done
