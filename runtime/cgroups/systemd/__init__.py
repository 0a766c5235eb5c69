"""The systemd cgroup driver: pods as transient slices, containers as transient scopes.

- ``units``: unit names and where systemd puts their cgroups (slice expansion);
- ``properties``: CRI resources as unit properties (pure);
- ``manager``: the port to systemd's manager (StartTransientUnit, StopUnit, ...);
- ``dbus``: that port over D-Bus with dbus-fast;
- ``driver``: ``SystemdCgroupDriver``, the CgroupDriver on top of the v2 driver.

Nothing is imported here: the unit-name rules are used by request validation, which must
not load the D-Bus client.
"""
