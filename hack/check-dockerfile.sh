#!/usr/bin/env bash
# check-dockerfile.sh fails when the Dockerfile (or .dockerignore) leaves out
# a top-level folder that the jobrun binary is built from, or when its image
# differs from the one `make image` builds without Docker (internal/image):
# no Docker engine runs here, so this is how a broken image build is caught.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=0
for dir in $(go list -deps ./cmd/jobrun | grep '^jobrun.dev/jobrun/' | sed 's|^jobrun.dev/jobrun/||' | cut -d/ -f1 | sort -u); do
	if ! grep -q "^COPY ${dir}/ ${dir}/$" Dockerfile; then
		echo "Dockerfile does not COPY ${dir}/, which cmd/jobrun is built from" >&2
		missing=1
	fi
	if ! grep -q "^!${dir}/$" .dockerignore; then
		echo ".dockerignore keeps ${dir}/ out of the build context" >&2
		missing=1
	fi
done
go test -count=1 -run '^TestDockerfileMatchesJobrun$' ./internal/image >/dev/null || {
	go test -count=1 -run '^TestDockerfileMatchesJobrun$' ./internal/image >&2
	missing=1
}
exit $missing
