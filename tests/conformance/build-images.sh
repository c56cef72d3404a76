#!/bin/sh
# Builds, offline, the images the Kubernetes e2e suite's conformance tests
# run, as one OCI layout under CACHE_ROOT/<key> (<key> hashes this script,
# busybox and agnhost: a second run with the same inputs reuses it). Prints
# the layout's path. The runner (tests/src/bin/conformance.rs) pushes each
# tag to the names of test/utils/image/manifest.go in a local registry.
#
#   build-images.sh AGNHOST KUBERNETES_MODULE_DIR [CACHE_ROOT]
#
# Tags:
#   busybox   busybox-static and its applets (the suite's busybox).
#   agnhost   busybox + /agnhost (built by `cargo xtask upstream`) laid out
#             as upstream's image (/agnhost-2, porter's certificate, /uploads,
#             user-defined-in-image), Entrypoint ["/agnhost"], Cmd ["pause"].
#             Also the pause image.
#   nginx     busybox httpd on port 80 serving /usr/share/nginx/html.
#   kitten, nautilus
#             agnhost + the suite's html/ files, Cmd ["test-webserver"].
#   nonroot   busybox, User 1234.
#
# Needs: umoci, GNU tar, sha256sum, /bin/busybox (busybox-static).
set -eu

AGNHOST=$1
KMOD=$2
CACHE_ROOT=${3:-/var/cache/keelson/conformance-images}
BUSYBOX=${BUSYBOX:-/bin/busybox}

for tool in umoci tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "build-images: $tool not installed" >&2; exit 127; }
done
[ -x "$BUSYBOX" ] || { echo "build-images: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 127; }
[ -x "$AGNHOST" ] || { echo "build-images: $AGNHOST missing (cargo xtask upstream)" >&2; exit 127; }
[ -d "$KMOD/test/images/kitten/html" ] || { echo "build-images: $KMOD is not k8s.io/kubernetes" >&2; exit 2; }

key=$(cat "$0" "$BUSYBOX" "$AGNHOST" | sha256sum | cut -c1-16)
final="$CACHE_ROOT/$key"
if [ -f "$final/index.json" ]; then
    echo "$final"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
work=$(mktemp -d "$CACHE_ROOT/.build-$key-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

mktar() { # DIR OUT
    tar --numeric-owner --owner=0 --group=0 --mtime=@1700000000 --sort=name \
        --format=pax --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf "$2" .
}

base="$work/base"
mkdir -p "$base/bin" "$base/etc" "$base/tmp" "$base/root" "$base/proc" "$base/sys" "$base/dev" \
    "$base/var/log" "$base/usr/bin"
cp "$BUSYBOX" "$base/bin/busybox"
chmod 0755 "$base/bin/busybox"
# Every applet this busybox has, as the suite's busybox image does.
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$base/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$base/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$base/etc/group"
chmod 1777 "$base/tmp"
chmod 0700 "$base/root"
mktar "$base" "$work/base.tar"

# As upstream's agnhost Dockerfile lays it out: /agnhost and /agnhost-2, the
# porter's certificate, /uploads, and the user and group "defined in image".
ag="$work/agnhost"
mkdir -p "$ag/etc" "$ag/uploads"
cp "$AGNHOST" "$ag/agnhost"
chmod 0755 "$ag/agnhost"
ln -s agnhost "$ag/agnhost-2"
cp "$KMOD/test/images/agnhost/porter/localhost.crt" "$KMOD/test/images/agnhost/porter/localhost.key" "$ag/"
chmod 0644 "$ag/localhost.crt" "$ag/localhost.key"
cat "$base/etc/passwd" > "$ag/etc/passwd"
echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >> "$ag/etc/passwd"
cat "$base/etc/group" > "$ag/etc/group"
printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >> "$ag/etc/group"
mktar "$ag" "$work/agnhost.tar"

ng="$work/nginx"
mkdir -p "$ng/usr/share/nginx/html"
cat > "$ng/usr/share/nginx/html/index.html" <<'EOF'
<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
</body>
</html>
EOF
mktar "$ng" "$work/nginx.tar"

for pic in kitten nautilus; do
    d="$work/$pic"
    mkdir -p "$d"
    cp "$KMOD/test/images/$pic/html/"* "$d/"
    chmod 0644 "$d"/*
    mktar "$d" "$work/$pic.tar"
done

layout="$work/layout"
path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci init --layout "$layout"

image() { # TAG LAYER...
    tag=$1
    shift
    umoci new --image "$layout:$tag"
    for l in "$@"; do
        umoci raw add-layer --image "$layout:$tag" --history.created_by "$l" "$work/$l.tar"
    done
}

image busybox base
umoci config --image "$layout:busybox" --os linux --architecture amd64 \
    --config.cmd sh --config.env "$path" --config.workingdir /

image agnhost base agnhost
umoci config --image "$layout:agnhost" --os linux --architecture amd64 \
    --config.entrypoint /agnhost --config.cmd pause --config.env "$path" --config.workingdir /

image nginx base nginx
umoci config --image "$layout:nginx" --os linux --architecture amd64 \
    --config.cmd httpd --config.cmd -f --config.cmd -p --config.cmd 80 \
    --config.cmd -h --config.cmd /usr/share/nginx/html \
    --config.exposedports 80/tcp --config.env "$path" --config.workingdir /

for pic in kitten nautilus; do
    image "$pic" base agnhost "$pic"
    umoci config --image "$layout:$pic" --os linux --architecture amd64 \
        --config.entrypoint /agnhost --config.cmd test-webserver --config.env "$path" \
        --config.workingdir /
done

image nonroot base
umoci config --image "$layout:nonroot" --os linux --architecture amd64 \
    --config.cmd sh --config.env "$path" --config.workingdir / --config.user 1234

umoci gc --layout "$layout"

if ! mv -T "$layout" "$final" 2>/dev/null; then
    [ -f "$final/index.json" ] || { echo "build-images: cannot publish $final" >&2; exit 1; }
fi
echo "$final"
