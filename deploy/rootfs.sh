#!/bin/sh
# The agent image's root filesystem: `deploy/rootfs.sh BINARY DIR` puts BINARY in
# DIR/usr/local/bin/sonde and beside it, at their own paths, the shared libraries it loads (as
# ldd lists them: glibc's libc, libm, the loader and libgcc_s), and nothing else. The
# Dockerfile copies DIR into an empty (`scratch`) image; sonde-bench and the tests build the
# same tree to measure it and to run the binary in it under chroot.
# The agent runs no other program and reads no file of the image's own: its config, TLS files,
# bundles and caches are mounted by the DaemonSet, and Loki's TLS roots are compiled in.
set -eu
if [ $# -ne 2 ]; then
	echo "usage: $0 BINARY DIR" >&2
	exit 2
fi
bin=$1
root=$2
mkdir -p "$root/usr/local/bin"
cp "$bin" "$root/usr/local/bin/sonde"
# ldd's lines: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader's
# `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no path.
libs=$(ldd "$bin" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p')
if [ -z "$libs" ]; then
	echo "$0: ldd lists no library for $bin" >&2
	exit 1
fi
for lib in $libs; do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done
