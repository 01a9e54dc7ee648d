# Sourced by cross/build and cross/test (not run on its own): the environment that makes cargo,
# the cc crate and pkg-config build for an ARM target with Debian's cross toolchain and
# multiarch libraries. The caller has already cd'ed to the repository root.
#
# Every setting is keyed by target (CC_<target>, CARGO_TARGET_<TRIPLE>_LINKER, ...), so the
# host-side parts of the same build (build scripts, proc macros) still use the native tools.
# Nothing is written to a cargo config file, so native builds of the checkout are unaffected.

# shellcheck shell=bash

CROSS_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# Rust target -> Debian GNU triplet (gcc-<triplet>, /usr/lib/<triplet>, /usr/include/<triplet>).
cross_triplet() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) echo "cross: unknown target $1" >&2; return 1 ;;
    esac
}

# Rust target -> the qemu-user binary that runs it.
cross_qemu() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo qemu-aarch64-static ;;
        armv7-unknown-linux-gnueabihf) echo qemu-arm-static ;;
        *) echo "cross: unknown target $1" >&2; return 1 ;;
    esac
}

# Short name used for the shipped files (dist/vitalgate-<arch>), Debian's architecture names.
cross_arch() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo arm64 ;;
        armv7-unknown-linux-gnueabihf) echo armhf ;;
        *) echo "cross: unknown target $1" >&2; return 1 ;;
    esac
}

CROSS_ROOT=$(pwd -P)
# A target directory of its own: the cross builds use different RUSTFLAGS (which would
# invalidate the native artifacts) and don't wait on the lock of other builds in target/.
export CARGO_TARGET_DIR="$CROSS_ROOT/target/cross"
CROSS_CARGO_HOME=$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd -P)

# Reproducibility: the same source gives the same bytes whatever the checkout, cargo home or
# target directory is called on the building machine.
#  - rustc: --remap-path-prefix rewrites the paths it embeds (panic locations of the project's
#    and its dependencies' code). The last matching prefix wins, so the most specific is last.
#    The standard library's paths are already /rustc/<commit-hash>/...
#  - C (SQLCipher through the cc crate): -ffile-prefix-map does the same for __FILE__ and any
#    debug info.
#  - SOURCE_DATE_EPOCH: the time of the last commit, for anything that stamps a date (GCC's
#    __DATE__/__TIME__ honour it) and for the mtime of the shipped files.
#  - RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS from the caller's environment are replaced, not added
#    to, so a developer's local flags don't leak into the binaries.
cross_remap_pairs=(
    "$CROSS_ROOT=/vitalgate"
    "$CROSS_CARGO_HOME=/cargo"
    "$CARGO_TARGET_DIR=/vitalgate/target"
)
unset RUSTFLAGS
CARGO_ENCODED_RUSTFLAGS=""
cross_cflags=""
for pair in "${cross_remap_pairs[@]}"; do
    CARGO_ENCODED_RUSTFLAGS+="${CARGO_ENCODED_RUSTFLAGS:+$'\x1f'}--remap-path-prefix=$pair"
    cross_cflags+="${cross_cflags:+ }-ffile-prefix-map=$pair"
done
export CARGO_ENCODED_RUSTFLAGS
# The cc crate splits CFLAGS on whitespace: a checkout path with a space can't be remapped.
case "$CROSS_ROOT$CROSS_CARGO_HOME" in
    *" "*) echo "cross: the checkout and cargo home paths must not contain spaces" >&2; exit 1 ;;
esac

# A SOURCE_DATE_EPOCH already set (a packaging pipeline's) is kept.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH

for t in "${CROSS_TARGETS[@]}"; do
    triplet=$(cross_triplet "$t")
    t_under=${t//-/_}                  # aarch64_unknown_linux_gnu: the cc/pkg-config crates
    T_UPPER=${t_under^^}               # AARCH64_UNKNOWN_LINUX_GNU: cargo and libsqlite3-sys

    # C compiler and archiver for the cc crate (SQLCipher), and rustc's linker.
    export "CC_$t_under=$triplet-gcc"
    export "AR_$t_under=$triplet-ar"
    export "CFLAGS_$t_under=$cross_cflags"
    export "CARGO_TARGET_${T_UPPER}_LINKER=$triplet-gcc"

    # libsqlite3-sys (bundled-sqlcipher) links -lcrypto. Its build script reads
    # <TARGET>_OPENSSL_LIB_DIR/_INCLUDE_DIR before the unprefixed names, so a host OPENSSL_DIR in
    # the environment can't send the cross build to the x86-64 library. The headers are
    # /usr/include/openssl/*.h (architecture independent) plus the target's
    # /usr/include/<triplet>/openssl/configuration.h, which the cross gcc searches by default
    # (multiarch); the host's copy under /usr/include/x86_64-linux-gnu is not on its path.
    export "${T_UPPER}_OPENSSL_LIB_DIR=/usr/lib/$triplet"
    export "${T_UPPER}_OPENSSL_INCLUDE_DIR=/usr/include"

    # pkg-config (libdbus-sys for BlueZ, later): Debian's <triplet>-pkg-config searches only
    # the target's multiarch .pc files. The pkg-config crate refuses to cross-compile unless
    # allowed; the target-keyed names leave host build scripts' lookups alone. No sysroot:
    # multiarch paths are real paths on this machine.
    export "PKG_CONFIG_$t_under=$triplet-pkg-config"
    export "PKG_CONFIG_ALLOW_CROSS_$t_under=1"
    export "PKG_CONFIG_LIBDIR_$t_under=/usr/lib/$triplet/pkgconfig:/usr/share/pkgconfig"

    # cargo test/run: the ARM binaries run under qemu-user. No -L/QEMU_LD_PREFIX: multiarch
    # installs the target's own loader and libc (libc6:<arch>) at their standard paths
    # (/lib/ld-linux-aarch64.so.1, /usr/lib/<triplet>), and its libcrypto.so.3 beside them, so
    # the binary finds everything where it would on the gateway. Pointing -L at the cross
    # toolchain's /usr/<triplet> instead made Debian 12's qemu 7.2 hang (aarch64) or crash
    # (armhf) in the first pthread_create, in any threaded program, even a C hello-thread.
    export "CARGO_TARGET_${T_UPPER}_RUNNER=$(cross_qemu "$t")"
done
unset t triplet t_under T_UPPER pair
