"""What an operator sees of the service: its logs (``logs``) and its metrics (``metrics``,
``exposition``), configured in one place for every process kind (``serve``, its API
processes under ``--processes N``, ``reviewstream worker``).
"""
