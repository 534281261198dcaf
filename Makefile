# jobrun's targets. `make help` lists them.
#
# Everything builds from Go modules: hack/build-tools.sh builds the control
# plane (kube-apiserver, etcd, kubectl, ...), controller-gen and helm into
# bin/ (git-ignored) and skips what is already built.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN            := $(CURDIR)/bin
CONTROLLER_GEN := $(BIN)/controller-gen
HELM           := $(BIN)/helm
KUBECTL        := $(BIN)/k8s/kubectl
export KUBEBUILDER_ASSETS ?= $(BIN)/k8s

# Test flags: the race detector on, results never cached (the suites talk to
# a real API server), one overall bound.
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

# As root, the real-node test (internal/realnode) must run, not skip: make
# tools installs what it needs. Empty: it skips when the machine cannot.
JOBRUN_REAL_NODE ?= $(if $(filter 0,$(shell id -u)),require,)
export JOBRUN_REAL_NODE

# As root, the console's browser test (apiserver, TestConsoleInBrowser) must
# run, not skip: make tools installs Chromium. Empty: it skips without one.
JOBRUN_BROWSER ?= $(if $(filter 0,$(shell id -u)),require,)
export JOBRUN_BROWSER

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

# More flags of hack/devcluster, e.g. DEV_ARGS=--postgres-port=15433 or
# DEV_ARGS=--archive=false.
DEV_ARGS ?=

.PHONY: dev
dev: tools-dev tools-kueue tools-pg build ## Run jobrun locally: a real control plane on loopback, the CRDs, the samples, Kueue, the manager and a PostgreSQL for the run archive (data kept in .dev/postgres). Ctrl-C stops it.
	go build -o $(BIN)/devcluster ./hack/devcluster
	$(BIN)/devcluster --root $(CURDIR) --jobrun $(BIN)/jobrun $(DEV_ARGS)

.PHONY: generate
generate: tools-gen ## Generate the API types' DeepCopy methods.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: tools-gen ## Generate CRDs and RBAC (the manager's, the standalone REST API's) into config/, and the Helm chart's CRDs and RBAC templates from config/.
	$(CONTROLLER_GEN) crd rbac:roleName=manager-role paths=./... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=api-role paths=./apiserver/... output:rbac:artifacts:config=config/api
	rm -f charts/jobrun/crds/*.yaml
	cp config/crd/bases/*.yaml charts/jobrun/crds/
	go run ./hack/chartgen --root $(CURDIR) --out charts/jobrun/templates/generated

.PHONY: fmt
fmt: ## Format the Go code.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet every package.
	go vet ./...

.PHONY: verify
verify: generate manifests tools-helm ## Regenerate everything and fail if a generated file, go.mod or the formatting is out of date.
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted (run make fmt)"; exit 1; fi
	go mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@changed=$$(git status --porcelain -- api config charts); \
	if [ -n "$$changed" ]; then echo "generated files are out of date (run make generate manifests and commit):"; echo "$$changed"; git --no-pager diff --stat -- api config charts; exit 1; fi
	$(HELM) lint --strict charts/jobrun
	for f in charts/jobrun/ci/*-values.yaml; do $(HELM) lint --strict charts/jobrun -f $$f; done
	hack/check-dockerfile.sh

.PHONY: test
test: tools vet verify ## Run all tests (builds the tools if missing, vets, verifies generated files, runs every suite against a real kube-apiserver, fuzzes the REST input parsers briefly).
	go test $(GO_TEST_FLAGS) ./...
	$(MAKE) fuzz

.PHONY: test-node
test-node: tools-dev tools-node tools-helm ## Only the real-node tests (internal/realnode, part of make test): a node of kubelet + containerd in a network namespace, jobrun's image on it installed with its chart, used through the REST API. Needs root. ~3-4 min.
	go test $(GO_TEST_FLAGS) -v ./internal/realnode/

# Each target's budget is a count of executions (about 3-10 s each here): a
# duration -fuzztime races Go 1.26's fuzz coordinator at its deadline and
# fails with "context deadline exceeded" under CPU contention
# (golang/go#75804, fixed in Go 1.27). FUZZTIME=1m (or 100000x) overrides
# every target's budget.
FUZZTIME ?=
FUZZ_TARGETS = FuzzDecodeTrigger:12000x FuzzParseListQuery:10000x FuzzJWT:8000x FuzzAPIKey:12000x FuzzRouting:1500x
.PHONY: fuzz
fuzz: ## Fuzz the REST API's inputs (trigger body, list query and cursor, JWTs, API keys, methods/paths/origins), each for a count of executions (FUZZTIME=1m: a time each).
	for spec in $(FUZZ_TARGETS); do \
		target=$${spec%%:*}; budget=$(if $(FUZZTIME),$(FUZZTIME),$${spec#*:}); \
		go test -run='^$$' -fuzz="^$$target\$$" -fuzztime=$$budget ./apiserver || exit 1; \
	done

.PHONY: bench
bench: tools-dev build ## Measure: start a local cluster, run the benchmark scenarios, print the figures (bench.json too). ~27 min (go run ./hack/bench -h: -only, sizes).
	go run ./hack/bench --out bench.json

##@ Build

.PHONY: build
build: ## Build the jobrun binary (all roles) into bin/jobrun.
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/jobrun ./cmd/jobrun

IMG ?= jobrun:dev
PAUSE_IMG ?= localhost/jobrun-pause:dev
IMAGE_DIR := $(BIN)/image

.PHONY: image
image: ## Build jobrun's image without Docker (static binary on scratch, user 65532, CA certificates; reproducible) into bin/image/jobrun.tar, a docker-archive tagged $(IMG); prints its digest.
	go run ./hack/image --package ./cmd/jobrun --binary $(IMAGE_DIR)/jobrun --tag $(IMG) --out $(IMAGE_DIR)/jobrun.tar

.PHONY: image-push
image-push: ## Build jobrun's image without Docker and push it as $(IMG) (credentials from ~/.docker/config.json).
	go run ./hack/image --package ./cmd/jobrun --binary $(IMAGE_DIR)/jobrun --tag $(IMG) --push

.PHONY: pause-image
pause-image: ## Build a pod sandbox (pause) image from hack/pause into bin/image/pause.tar, tagged $(PAUSE_IMG), for a node without registry access.
	go run ./hack/image --kind pause --package ./hack/pause --binary $(IMAGE_DIR)/pause --tag $(PAUSE_IMG) --out $(IMAGE_DIR)/pause.tar

.PHONY: docker-build
docker-build: ## Build the same image with a Docker engine.
	docker build -t $(IMG) .

##@ Tools (built from Go modules into bin/, skipped when up to date)

.PHONY: tools
tools: tools-pg tools-browser ## Build what the tests need: the whole control plane (the dev command's test runs it), controller-gen, helm, Kueue's manager, a real node's kubelet, kube-proxy and Debian packages, PostgreSQL's server binaries and Chromium.
	hack/build-tools.sh all

.PHONY: tools-dev
tools-dev: ## Build what make dev needs (adds kube-controller-manager, kube-scheduler).
	hack/build-tools.sh dev

.PHONY: tools-node
tools-node: ## Build kubelet and kube-proxy and, as root, apt-get install containerd, runc, CNI plugins and iptables when missing (the real-node test's needs; part of tools).
	hack/build-tools.sh node

.PHONY: tools-pg
tools-pg: ## Find PostgreSQL's server binaries (initdb, pg_ctl, postgres) for make dev's archive and the tests' throwaway databases; as root, apt-get install postgresql when missing (its service not started), else say what to install and fail.
	hack/build-tools.sh postgres

.PHONY: tools-browser
tools-browser: ## Find Chromium (chromium, chromium-browser) for the console's browser test; as root, apt-get install chromium when missing, else say what to install and fail.
	hack/build-tools.sh browser

.PHONY: tools-kueue
tools-kueue: ## Build Kueue's manager and copy its CRDs and webhook configurations into bin/kueue (internal/kueuetest's needs; part of tools).
	hack/build-tools.sh kueue

.PHONY: tools-gen
tools-gen:
	hack/build-tools.sh controller-gen

.PHONY: tools-helm
tools-helm:
	hack/build-tools.sh helm
