#!/usr/bin/env bash
# Writes an OCI image layout (as a tar archive) holding a static busybox and
# /www/index.html, for `zeitwork deploy --oci OUT -- /bin/busybox httpd -f -p 8080 -h /www`.
#
#   bash bench/oci-busybox.sh OUT.tar
set -euo pipefail
out=${1:?usage: bash bench/oci-busybox.sh OUT.tar}
bb=$(command -v busybox) || {
    echo "oci-busybox.sh: no busybox on PATH; install a static one (Debian: apt-get install busybox-static)" >&2
    exit 1
}
if ! file -L "$bb" 2>/dev/null | grep -q "statically linked"; then
    case "$(ldd "$bb" 2>&1)" in
        *"not a dynamic executable"*|*"statically linked"*) ;;
        *) echo "oci-busybox.sh: $bb is dynamically linked and would not run in the image; install busybox-static" >&2; exit 1 ;;
    esac
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree/bin" "$work/tree/www" "$work/layout/blobs/sha256"
cp "$bb" "$work/tree/bin/busybox"
echo "hello from an image" >"$work/tree/www/index.html"
tar -C "$work/tree" -czf "$work/layer.tgz" .
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$work/layout/blobs/sha256/$d"; echo "$d"; }
layer=$(blob "$work/layer.tgz")
printf '{}' >"$work/config.json"
config=$(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$layer" "$(stat -c %s "$work/layer.tgz")" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' \
  "$manifest" "$(stat -c %s "$work/manifest.json")" >"$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
tar -C "$work/layout" -cf "$out" .
