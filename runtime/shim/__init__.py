"""The pod shim: a single-threaded process per pod that parents its containers.

- ``factory``: started once by the daemon; pre-imports the shim code, ``gc.freeze()``s,
  and forks one shim per pod on request (cheap to spawn, pages shared).
- ``server``: the shim itself (asyncio, single-threaded): creates pod namespaces, starts
  container and exec processes in forked children, holds their stdio, writes CRI logs and
  exit files, serves attach/exec sessions.
- ``stdio``: the shim's end of attach/exec sessions and ExecSync output.
- ``init``: what a forked child does between fork and execve.
- ``protocol`` / ``wire``: the typed requests, replies and events, and the lines and frames
  that carry them (versioned: shims outlive daemon upgrades).
- ``port`` / ``client`` / ``session`` / ``manager``: the daemon's side.
"""
