"""The hub: one Redis pub/sub subscription per process, fanned out to every follower in it.

- ``hub``: ``Hub``, which subscribes to the channels of the jobs followed here, routes their
  notifications to feeds and checks quiet feeds against the jobs (through a ``JobReader``);
- ``feed``: ``Feed``, what this process knows of one job's live stream, shared by all its
  followers here;
- ``subscribers/``: how the hub listens, on a single Redis or on a Redis Cluster.
"""

from .feed import Feed
from .hub import Hub, JobReader

__all__ = ["Feed", "Hub", "JobReader"]
