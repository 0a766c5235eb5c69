"""The only package with privileged syscalls: ctypes libc, mounts, namespaces, /proc."""
