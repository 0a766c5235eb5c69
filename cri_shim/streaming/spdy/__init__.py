"""SPDY/3.1 (the subset Kubernetes streaming uses), written from the draft-mbelshe-httpbis-spdy-00
and SPDY/3.1 specifications. No Python library implements it."""
