"""What the tests share: real servers, followers of each mode, processes, a local Redis Cluster,
scripted upstreams and a cuttable proxy; imported by name (``from tests.support import live``)."""
