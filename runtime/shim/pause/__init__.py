"""The pod's PID holder as a program of its own: ``pause.c``, a few hundred bytes of raw
system calls that, as pid 1 of a pod-shared PID namespace, reap orphans and end on SIGTERM.

It replaced a forked Python interpreter (issue 15: 8.9 MB PSS per pod in shared-PID mode,
against 3.7 MB for containerd's shim plus pause); the binary costs 16 kB.

- ``pause.c``: the program (what it does and why: its header comment).
- ``build``: compiling it, cached by a hash of its recipe
  (``python -m runtime.shim.pause build [--out PATH]``; scripts/install.sh runs it for the
  default path, ``pods.pause_binary``).
- ``binary``: the daemon's start-up check of the configured file, and the sealed memfd copy
  the shim execs, so that no pod can write to what /proc/<holder>/exe names.

The source lives here, beside runtime/shim/pidholder.py which runs it, rather than in a
separate native/ tree: the builder finds it relative to this module, so a checkout (or the
test suite on a fresh clone) needs nothing but a C compiler to make it.
"""
