#!/usr/bin/env bash
# Compiles every probe (ebpf-core/src/*.bpf.c) into the object committed beside it, and the
# benches' reference programs (tests/bpf/*.bpf.c: empty programs on the probes' hooks).
# The objects are what `cargo build` embeds, so building the agent never needs clang; CI runs
# this script and fails if the result differs from what is committed (`--check`).
# Paths are relative and debug prefixes normalised so that any checkout builds the same bytes.
# Sources are compiled from a copy in a fresh mktemp directory: clang's BTF type order still
# depends on the length of the build path (tcp_rtt's differs between /work/main and a longer
# checkout), and mktemp's paths all have the same length.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$root/ebpf-core/include" "$build/include"
CLANG=${CLANG:-clang-19}
STRIP=${LLVM_STRIP:-llvm-strip-19}
check=0
[ "${1:-}" = "--check" ] && check=1

status=0
# compile DIR: every DIR/*.bpf.c (relative to the repository) into DIR/*.bpf.o, from a copy
# in $build/src with the headers of DIR and ebpf-core/src.
compile() {
	local dir=$1
	rm -rf "$build/src"
	mkdir "$build/src"
	cp "$root/ebpf-core/src/"*.h "$root/$dir/"*.bpf.c "$build/src/"
	cp "$root/$dir/"*.h "$build/src/" 2>/dev/null || true
	for path in "$root/$dir/"*.bpf.c; do
		local src obj out
		src=$(basename "$path")
		obj="$root/$dir/${src%.c}.o"
		out=$(mktemp)
		(cd "$build/src" && "$CLANG" -g -O2 -target bpf -D__TARGET_ARCH_x86 -I../include -I. \
			-ffile-prefix-map="$PWD"=. -fdebug-prefix-map="$PWD"=. -fno-ident \
			-Wall -Werror -c "$src" -o "$out")
		# Keep BTF (CO-RE needs it), drop DWARF, which only adds size.
		"$STRIP" -g "$out"
		if [ $check = 1 ]; then
			if ! cmp -s "$out" "$obj"; then
				echo "$dir/${src%.c}.o is stale: run ebpf-core/build-bpf.sh and commit the result" >&2
				status=1
			fi
			rm -f "$out"
		else
			mv "$out" "$obj"
			chmod 644 "$obj"
		fi
	done
}
compile ebpf-core/src
compile tests/bpf
exit $status
