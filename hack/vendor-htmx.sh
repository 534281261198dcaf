#!/usr/bin/env bash
# Re-fetches the console's vendored htmx from the npm registry and checks it
# against the sha256 recorded in apiserver/ui/static/README.md. Usage:
#   hack/vendor-htmx.sh          # fetch, check, write apiserver/ui/static/htmx.min.js
#   hack/vendor-htmx.sh --check  # fetch and compare with the committed file only
set -euo pipefail
VERSION=2.0.11
SHA256=d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/apiserver/ui/static/htmx.min.js
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL "https://registry.npmjs.org/htmx.org/-/htmx.org-$VERSION.tgz" -o "$tmp/htmx.tgz"
tar -xzf "$tmp/htmx.tgz" -C "$tmp" package/dist/htmx.min.js
got=$(sha256sum "$tmp/package/dist/htmx.min.js" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
	echo "htmx.org@$VERSION dist/htmx.min.js: sha256 $got, want $SHA256" >&2
	exit 1
fi
if [ "${1:-}" = --check ]; then
	cmp "$tmp/package/dist/htmx.min.js" "$out" && echo "apiserver/ui/static/htmx.min.js is htmx.org@$VERSION ($SHA256)"
	exit
fi
cp "$tmp/package/dist/htmx.min.js" "$out"
echo "wrote $out: htmx.org@$VERSION ($SHA256)"
