"""The processes that work the queue (common/jobqueue/) for the stage graph (common/graph.py): worker (the
loop, `python -m common.workers.worker`), scheduling (which stage a worker runs next, pure functions),
supervisor (the launcher's process manager), warmup (one process fills the kernel cache first) and
ray_slots (the supervisor's slots as Ray actors on a cluster; imported only with --ray)."""
