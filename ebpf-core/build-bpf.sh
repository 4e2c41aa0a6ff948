#!/usr/bin/env bash
# Compiles every probe (ebpf-core/src/*.bpf.c) into the object committed beside it.
# The objects are what `cargo build` embeds, so building the agent never needs clang; CI runs
# this script and fails if the result differs from what is committed (`--check`).
# Paths are relative and debug prefixes normalised so that any checkout builds the same bytes.
# Sources are compiled from a copy in a fresh mktemp directory: clang's BTF type order still
# depends on the length of the build path (tcp_rtt's differs between /work/main and a longer
# checkout), and mktemp's paths all have the same length.
set -euo pipefail
cd "$(dirname "$0")/src"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
mkdir "$build/src"
cp -r ../include "$build/include"
cp ./*.bpf.c ./*.h "$build/src/"
CLANG=${CLANG:-clang-19}
STRIP=${LLVM_STRIP:-llvm-strip-19}
check=0
[ "${1:-}" = "--check" ] && check=1

status=0
for src in *.bpf.c; do
	obj=${src%.c}.o
	out=$(mktemp)
	(cd "$build/src" && "$CLANG" -g -O2 -target bpf -D__TARGET_ARCH_x86 -I../include -I. \
		-ffile-prefix-map="$PWD"=. -fdebug-prefix-map="$PWD"=. -fno-ident \
		-Wall -Werror -c "$src" -o "$out")
	# Keep BTF (CO-RE needs it), drop DWARF, which only adds size.
	"$STRIP" -g "$out"
	if [ $check = 1 ]; then
		if ! cmp -s "$out" "$obj"; then
			echo "ebpf-core/src/$obj is stale: run ebpf-core/build-bpf.sh and commit the result" >&2
			status=1
		fi
		rm -f "$out"
	else
		mv "$out" "$obj"
		chmod 644 "$obj"
	fi
done
exit $status
