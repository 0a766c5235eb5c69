#!/usr/bin/env python3
"""Benchmark: compiling the RuntimeDefault seccomp profile, our pure-Python compiler versus
Debian's libseccomp2 (through ctypes) building the same resolved rules. Not a test.

    .venv/bin/python bench/seccomp_compile.py [--rounds 20]

Prints the median time per compile and the program size (instructions) of each, and the
time of a cache hit in SeccompProfiles (what every container after the first pays).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.model.sandbox import ProfileType, SecurityProfile
from runtime.security.capabilities import DEFAULT_CAPABILITIES
from runtime.security.seccomp.bpf import compile_filter
from runtime.security.seccomp.profile import ProfileContext, parse_profile
from runtime.security.seccomp.service import RUNTIME_DEFAULT_FILE, SeccompProfiles
from tests.support.bpf import LibSeccomp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    text = RUNTIME_DEFAULT_FILE.read_bytes()
    ctx = ProfileContext(frozenset(DEFAULT_CAPABILITIES), "x86_64", (6, 18))

    ours: list[float] = []
    size_ours = 0
    for _ in range(args.rounds):
        t = time.perf_counter()
        prog = compile_filter(parse_profile(text).resolve(ctx))
        ours.append(time.perf_counter() - t)
        size_ours = len(prog) // 8

    filt = parse_profile(text).resolve(ctx)
    theirs: list[float] = []
    size_theirs = 0
    for _ in range(args.rounds):
        t = time.perf_counter()
        ref = LibSeccomp(filt.default_action, list(filt.architectures), filt.bad_arch_action)
        for rule in filt.rules:
            for name in rule.names:
                if ref.resolve("x86_64", name) >= 0:
                    ref.add(rule.action, name, [(c.index, c.op, c.value, c.value_two) for c in rule.conditions])
        prog = ref.export()
        ref.close()
        theirs.append(time.perf_counter() - t)
        size_theirs = len(prog) // 8

    s = SeccompProfiles(native_arch="x86_64", kernel=(6, 18))
    rd = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    s.choose(rd, privileged=False, bounding_caps=DEFAULT_CAPABILITIES)
    hits: list[float] = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        s.choose(rd, privileged=False, bounding_caps=DEFAULT_CAPABILITIES)
        hits.append(time.perf_counter() - t)

    print(f"pure Python : {statistics.median(ours) * 1000:7.2f} ms  {size_ours} instructions")
    print(f"libseccomp  : {statistics.median(theirs) * 1000:7.2f} ms  {size_theirs} instructions (ctypes, same rules)")
    print(f"cache hit   : {statistics.median(hits) * 1000:7.3f} ms")


if __name__ == "__main__":
    main()
