"""Seccomp: profiles in the Docker/OCI JSON format compiled to classic BPF in pure Python.

``profile`` parses and resolves profiles, ``bpf`` compiles them, ``service`` picks the
profile a container gets (RuntimeDefault, Unconfined, Localhost) and caches programs,
``syscall_tables`` is generated from the kernel headers (scripts/gen-syscall-tables.py).
"""
