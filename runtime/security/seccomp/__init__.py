"""Seccomp: profiles in the Docker/OCI JSON format compiled to classic BPF in pure Python.

``profile`` parses and resolves profiles, ``bpf`` compiles them, ``service`` picks the
profile a container gets (RuntimeDefault, Unconfined, Localhost) and caches programs,
``syscall_tables`` is generated from the kernel headers (scripts/gen-syscall-tables.py).

Why our own compiler rather than Debian's libseccomp2 through ctypes (both were measured,
``bench/seccomp_compile.py``): libseccomp 2.5.4 (bookworm) resolves syscall names only up to
Linux 6.7 (Debian's update added cachestat, fchmodat2, futex_wake/wait/requeue), so on this
6.18 kernel it cannot place statmount, listmount, mseal, the *xattrat family, file_getattr,
uretprobe, ... (15 names of our RuntimeDefault); runc works around such gaps with a
hand-patched ENOSYS stub. Our tables come from the kernel headers plus the later
unified-numbered syscalls, and the ENOSYS tail for newer syscalls is part of the compiler.
Speed is not the deciding factor but favours us too: RuntimeDefault compiles in ~8 ms to 662
instructions, libseccomp's build of the same rules takes ~14-19 ms for 946 instructions, and
a cache hit costs ~0.03 ms. libseccomp stays in the tests as a reference: the unit tests
compare our programs' decisions with libseccomp's on random profiles and on every syscall
number of RuntimeDefault (where libseccomp knows the name), through a BPF interpreter. One
documented divergence: for overlapping conditional rules on one syscall, libseccomp 2.5's
decision tree can miss a matching rule; we evaluate rules in order, first match wins.
"""
