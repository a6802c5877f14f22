"""How the hub listens: the pub/sub connection(s) behind its feeds, one module per variant.

- ``plain``: ``PlainSubscriber``, one connection to a single Redis, ``SUBSCRIBE`` per channel;
- ``sharded``: ``ShardedSubscriber``, ``SSUBSCRIBE`` per channel on the node of its slot of a
  Redis Cluster, one connection per node it needs;
- ``base``: what both speak to the hub (``Listener``) and how the hub drives them
  (``Subscriber``).
"""

from .base import Listener, Subscriber
from .plain import PlainSubscriber
from .sharded import ShardedSubscriber

__all__ = ["Listener", "PlainSubscriber", "ShardedSubscriber", "Subscriber"]
