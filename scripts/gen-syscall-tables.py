#!/usr/bin/env python3
"""Generate runtime/security/seccomp/syscall_tables.py from the kernel's UAPI headers.

Sources (Debian package linux-libc-dev):
  x86_64  /usr/include/x86_64-linux-gnu/asm/unistd_64.h
  x86     /usr/include/x86_64-linux-gnu/asm/unistd_32.h   (i386, the 32-bit compat ABI)
  x32     /usr/include/x86_64-linux-gnu/asm/unistd_x32.h  (numbers carry __X32_SYSCALL_BIT)
  aarch64 /usr/include/asm-generic/unistd.h evaluated as arm64's uapi asm/unistd.h includes
          it (64-bit, with the __ARCH_WANT_* switches arm64 defines)

Syscalls added after the installed headers are appended from LATER_SYSCALLS below: since
Linux 5.1 (number 424) new syscalls get one number on every architecture (the kernel's
scripts/syscall.tbl), so one list serves all four tables; x86_64-only ones are listed apart.

With --check, the output is compared to the committed file (CI). With --verify, every name
libseccomp (libseccomp.so.2, via ctypes) can resolve is compared to our number: a mismatch
is an error, names only one side knows are listed.

Usage: scripts/gen-syscall-tables.py [--include DIR] [--check] [--verify]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runtime" / "security" / "seccomp" / "syscall_tables.py"

X32_SYSCALL_BIT = 0x40000000

# Numbers 424 and above are shared by all architectures (kernel: scripts/syscall.tbl,
# "common" entries of arch/x86/entry/syscalls/syscall_64.tbl). (name, number, first release)
LATER_SYSCALLS: tuple[tuple[str, int, str], ...] = (
    ("cachestat", 451, "6.5"),
    ("fchmodat2", 452, "6.6"),
    ("map_shadow_stack", 453, "6.6"),
    ("futex_wake", 454, "6.7"),
    ("futex_wait", 455, "6.7"),
    ("futex_requeue", 456, "6.7"),
    ("statmount", 457, "6.8"),
    ("listmount", 458, "6.8"),
    ("lsm_get_self_attr", 459, "6.8"),
    ("lsm_set_self_attr", 460, "6.8"),
    ("lsm_list_modules", 461, "6.8"),
    ("mseal", 462, "6.10"),
    ("setxattrat", 463, "6.13"),
    ("getxattrat", 464, "6.13"),
    ("listxattrat", 465, "6.13"),
    ("removexattrat", 466, "6.13"),
    ("open_tree_attr", 467, "6.15"),
    ("file_getattr", 468, "6.17"),
    ("file_setattr", 469, "6.17"),
    ("listns", 470, "6.19"),
)
# x86_64-only additions after 6.1 (arch/x86/entry/syscalls/syscall_64.tbl).
LATER_X86_64: tuple[tuple[str, int, str], ...] = (
    ("uretprobe", 335, "6.11"),
    ("uprobe", 336, "6.17"),
)
# arm64's uapi/asm/unistd.h defines these before including asm-generic/unistd.h.
AARCH64_DEFINES = {
    "__ARCH_WANT_RENAMEAT",
    "__ARCH_WANT_NEW_STAT",
    "__ARCH_WANT_SET_GET_RLIMIT",
    "__ARCH_WANT_TIME32_SYSCALLS",
    "__ARCH_WANT_SYS_CLONE3",
    "__ARCH_WANT_MEMFD_SECRET",
}

_DEFINE = re.compile(r"^#define\s+(__NR3264_\w+|__NR_\w+)\s+(.+?)\s*(/\*.*)?$")


def _value(expr: str, known: dict[str, int]) -> int | None:
    expr = expr.strip()
    m = re.fullmatch(r"\(?\s*__X32_SYSCALL_BIT\s*\+\s*(\d+)\s*\)?", expr)
    if m:
        return X32_SYSCALL_BIT + int(m.group(1))
    if re.fullmatch(r"\d+", expr):
        return int(expr)
    if expr in known:
        return known[expr]
    return None


def parse_flat(path: Path) -> dict[str, int]:
    """A header of plain ``#define __NR_x N`` lines (asm/unistd_{64,32,x32}.h)."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        m = _DEFINE.match(line)
        if not m or m.group(1) == "__NR_syscalls":
            continue
        value = _value(m.group(2), {})
        if value is None:
            raise SystemExit(f"{path}: cannot evaluate {line!r}")
        out[m.group(1).removeprefix("__NR_")] = value
    return out


def _eval_condition(cond: str, defines: set[str], bits: int) -> bool:
    """The few #if forms asm-generic/unistd.h uses: defined(X), __BITS_PER_LONG ==/!= N,
    ||, &&, !."""
    expr = re.sub(r"defined\s*\(\s*(\w+)\s*\)", lambda m: str(m.group(1) in defines), cond)
    expr = expr.replace("__BITS_PER_LONG", str(bits)).replace("||", " or ").replace("&&", " and ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    if not re.fullmatch(r"[\sA-Za-z0-9=!()]*", expr) or re.search(r"\b(?!True|False|or|and|not)[A-Za-z_]\w*", expr):
        raise SystemExit(f"unsupported #if expression: {cond!r}")
    return bool(eval(expr, {"__builtins__": {}}, {}))


def parse_generic(path: Path, defines: set[str], bits: int = 64) -> dict[str, int]:
    """asm-generic/unistd.h with a tiny preprocessor (#if/#ifdef/#ifndef/#else/#endif)."""
    known: dict[str, int] = {}
    stack: list[tuple[bool, bool]] = []  # (this branch active, any branch taken)
    active = True
    lines = path.read_text().replace("\\\n", " ").splitlines()
    for raw in lines:
        line = raw.strip()
        if line.startswith("#ifdef") or line.startswith("#ifndef"):
            name = line.split()[1]
            cond = (name in defines) == line.startswith("#ifdef")
            stack.append((active, cond))
            active = active and cond
        elif line.startswith("#if"):
            cond = _eval_condition(line[3:].split("/*")[0], defines, bits)
            stack.append((active, cond))
            active = active and cond
        elif line.startswith("#else"):
            outer, taken = stack[-1]
            active = outer and not taken
            stack[-1] = (outer, True)
        elif line.startswith("#endif"):
            active = stack.pop()[0]
        elif active and line.startswith("#undef"):
            known.pop(line.split()[1], None)
        elif active:
            m = _DEFINE.match(line)
            if m:
                value = _value(m.group(2), known)
                if value is None:
                    raise SystemExit(f"{path}: cannot evaluate {line!r}")
                known[m.group(1)] = value
    if stack:
        raise SystemExit(f"{path}: unbalanced #if")
    # __NR_arch_specific_syscall marks the start of a range, it is not a syscall.
    skip = {"__NR_syscalls", "__NR_arch_specific_syscall"}
    return {k.removeprefix("__NR_"): v for k, v in known.items() if k.startswith("__NR_") and k not in skip}


def tables(include: Path) -> dict[str, dict[str, int]]:
    asm = include / "x86_64-linux-gnu" / "asm"
    result = {
        "x86_64": parse_flat(asm / "unistd_64.h"),
        "x86": parse_flat(asm / "unistd_32.h"),
        "x32": parse_flat(asm / "unistd_x32.h"),
        "aarch64": parse_generic(include / "asm-generic" / "unistd.h", AARCH64_DEFINES),
    }
    for arch, table in result.items():
        base = X32_SYSCALL_BIT if arch == "x32" else 0
        extra = LATER_SYSCALLS + (LATER_X86_64 if arch == "x86_64" else ())
        for name, nr, _release in extra:
            if name in table and table[name] != base + nr:
                raise SystemExit(f"{arch}: {name} is {table[name]} in the headers, {base + nr} in LATER_SYSCALLS")
            table.setdefault(name, base + nr)
    return result


def render(result: dict[str, dict[str, int]], include: Path) -> str:
    out = [
        '"""Syscall name -> number for each architecture the seccomp compiler supports.',
        "",
        "GENERATED by scripts/gen-syscall-tables.py from the kernel UAPI headers under",
        f"{include} (linux-libc-dev), plus the syscalls added to Linux after those headers",
        "(listed in the script). Do not edit by hand: re-run the script.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
    ]
    for arch, table in result.items():
        out.append(f"{arch.upper()}: dict[str, int] = {{")
        for name, nr in sorted(table.items(), key=lambda kv: (kv[1], kv[0])):
            out.append(f'    "{name}": {nr:#x},' if arch == "x32" else f'    "{name}": {nr},')
        out.append("}")
        out.append("")
    out.append("TABLES: dict[str, dict[str, int]] = {")
    for arch in result:
        out.append(f'    "{arch}": {arch.upper()},')
    out.append("}")
    return "\n".join(out) + "\n"


def verify(result: dict[str, dict[str, int]]) -> int:
    import ctypes

    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    tokens = {"x86_64": 0xC000003E, "x86": 0x40000003, "x32": 0x4000003E, "aarch64": 0xC00000B7}
    errors = 0
    for arch, table in result.items():
        only_ours = []
        for name, nr in table.items():
            theirs = lib.seccomp_syscall_resolve_name_arch(ctypes.c_uint32(tokens[arch]), name.encode())
            if theirs < 0:
                only_ours.append(name)
            elif theirs != nr:
                print(f"MISMATCH {arch} {name}: ours {nr} libseccomp {theirs}")
                errors += 1
        print(f"{arch}: {len(table)} names; not known to this libseccomp: {sorted(only_ours)}")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--include", type=Path, default=Path("/usr/include"))
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()
    result = tables(args.include)
    text = render(result, args.include)
    if args.verify and verify(result):
        return 1
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run scripts/gen-syscall-tables.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}: " + ", ".join(f"{a} {len(t)}" for a, t in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
