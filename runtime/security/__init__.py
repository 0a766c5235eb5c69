"""Security and container-spec mechanisms: what a container may do and see.

Pure(ish) functions the container service calls while building a LaunchSpec: seccomp
programs, capability sets, the user and groups from the image, default and CRI mounts,
devices, sysctls, LSM checks and process attributes. Each module states its contract;
:mod:`runtime.security.container` composes them for one container.
"""
