#!/bin/sh
# Builds Keelson's test images from busybox-static, offline, as an OCI layout
# under CACHE_ROOT/<key>, where <key> hashes this script and the busybox
# binary: a second run with the same inputs reuses the layout. Prints the
# layout's path.
#
#   build-test-images.sh [CACHE_ROOT]     (default /var/cache/keelson/images)
#
# Tags in the layout:
#   busybox   one layer: /bin/busybox, applet symlinks, /etc/passwd, /tmp, /root.
#             Cmd ["sh"], Env PATH, WorkingDir /.
#   whiteout  two layers. Layer 1 = the busybox files plus /data/old.txt,
#             /data/keep.txt, /data/hard.txt (hard link to keep.txt) and
#             /etc/replaced/{a.txt,sub/b.txt}. Layer 2 deletes /data/old.txt
#             (.wh.old.txt) and replaces /etc/replaced (.wh..wh..opq + new.txt).
#             Entrypoint ["/bin/sh","-c"], Cmd ["cat /data/keep.txt"],
#             Env PATH + KEELSON_TEST=whiteout, WorkingDir /data, User 1000:1000.
#
# Needs: umoci, GNU tar, sha256sum, /bin/busybox (BUSYBOX overrides).
set -eu

CACHE_ROOT=${1:-/var/cache/keelson/images}
BUSYBOX=${BUSYBOX:-/bin/busybox}

for tool in umoci tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "build-test-images: $tool not installed" >&2; exit 127; }
done
[ -x "$BUSYBOX" ] || { echo "build-test-images: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 127; }

key=$(cat "$0" "$BUSYBOX" | sha256sum | cut -c1-16)
final="$CACHE_ROOT/$key"
if [ -f "$final/index.json" ]; then
    echo "$final"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
work=$(mktemp -d "$CACHE_ROOT/.build-$key-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# Reproducible tars: numeric root ownership, fixed mtimes, sorted names.
mktar() { # DIR OUT
    tar --numeric-owner --owner=0 --group=0 --mtime=@1700000000 --sort=name \
        --format=pax --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf "$2" .
}

base="$work/base"
mkdir -p "$base/bin" "$base/etc" "$base/tmp" "$base/root" "$base/proc" "$base/sys" "$base/dev"
cp "$BUSYBOX" "$base/bin/busybox"
chmod 0755 "$base/bin/busybox"
for applet in sh ash echo sleep cat ls cp mv rm mkdir touch true false env id ps \
    kill test printf head tail grep sed wc date hostname ip ping nc wget httpd tar \
    vi du df mount umount sync seq tee yes whoami stat readlink ln chmod chown; do
    ln -s busybox "$base/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$base/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$base/etc/group"
chmod 1777 "$base/tmp"
chmod 0700 "$base/root"
mktar "$base" "$work/busybox.tar"

# Layer 1 of the whiteout image: busybox plus files that layer 2 changes.
l1="$work/l1"
cp -a "$base" "$l1"
mkdir -p "$l1/data" "$l1/etc/replaced/sub"
echo old > "$l1/data/old.txt"
echo keep > "$l1/data/keep.txt"
ln "$l1/data/keep.txt" "$l1/data/hard.txt"
echo a > "$l1/etc/replaced/a.txt"
echo b > "$l1/etc/replaced/sub/b.txt"
mktar "$l1" "$work/l1.tar"

# Layer 2: OCI whiteouts, written as the plain files the spec uses.
l2="$work/l2"
mkdir -p "$l2/data" "$l2/etc/replaced"
: > "$l2/data/.wh.old.txt"
: > "$l2/etc/replaced/.wh..wh..opq"
echo new > "$l2/etc/replaced/new.txt"
mktar "$l2" "$work/l2.tar"

layout="$work/layout"
path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci init --layout "$layout"

umoci new --image "$layout:busybox"
umoci raw add-layer --image "$layout:busybox" --history.created_by "busybox-static" "$work/busybox.tar"
umoci config --image "$layout:busybox" --os linux --architecture amd64 \
    --config.cmd sh --config.env "$path" --config.workingdir /

umoci new --image "$layout:whiteout"
umoci raw add-layer --image "$layout:whiteout" --history.created_by "busybox + data" "$work/l1.tar"
umoci raw add-layer --image "$layout:whiteout" --history.created_by "whiteouts" "$work/l2.tar"
umoci config --image "$layout:whiteout" --os linux --architecture amd64 \
    --config.entrypoint /bin/sh --config.entrypoint -c --config.cmd "cat /data/keep.txt" \
    --config.env "$path" --config.env KEELSON_TEST=whiteout \
    --config.workingdir /data --config.user 1000:1000

umoci gc --layout "$layout"

# Publish atomically; a concurrent build of the same key may have won.
if ! mv -T "$layout" "$final" 2>/dev/null; then
    [ -f "$final/index.json" ] || { echo "build-test-images: cannot publish $final" >&2; exit 1; }
fi
echo "$final"
