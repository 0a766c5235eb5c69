"""CDI (Container Device Interface): spec files (:mod:`spec`), the spec directories and the
resolution of a container's devices (:mod:`registry`), the edits in the engine's terms
(:mod:`apply`) and the OCI hooks the daemon runs (:mod:`hooks`)."""
