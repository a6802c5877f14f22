"""The processes reviewstream starts around the one it runs in.

- ``redis_server``: the private ``redis-server`` of the zero-config default (``EmbeddedRedis``),
  the newest one found (``redis_server_binary``), and ``die_with_parent``, which every child
  asks for so that nothing outlives a parent killed with SIGKILL;
- ``serve``: ``reviewstream serve --processes N``, the parent of N API processes under uvicorn's
  supervisor (``ApiProcess`` builds each one's app);
- ``loops``: the event loop our own processes run on (uvloop when installed, as uvicorn's).

The worker process is one of the places workers run: ``workers.process.WorkerProcess``.
"""
