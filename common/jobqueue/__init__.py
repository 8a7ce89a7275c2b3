"""The file-backed job queue (Maildir-style; see docs/queue.md): a job is one JSON file, the folder holding
it is its state, and every state change is one rename. It knows jobs, states, leases and dependencies;
what a stage makes it learns from the stage's rules (docs/stage_graph.md). It imports nothing else of the
project (tests/test_queue_imports.py). Modules: layout (paths), job (the record), atomic (whole-file
writes), queue (enqueue/claim/complete/fail/reclaim, dependencies), lease (worker identity and heartbeat),
crash (test crash points), planner (nodes -> jobs), manifest (the plan's settings), recovery (startup
repair, --fresh), status (counts, failures, ETA). The processes that work it are in common/workers/."""
