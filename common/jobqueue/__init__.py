"""The file-backed job queue (Maildir-style; see docs/queue.md): a job is one JSON file, the folder holding
it is its state, and every state change is one rename. It knows jobs, states, leases and dependencies;
what a stage makes it learns from the stage's rules (docs/stage_graph.md). Modules: layout (paths), job
(the record), queue (enqueue/claim/complete/fail/reclaim, dependencies), lease (worker identity and
heartbeat), crash (test crash points), planner (nodes -> jobs), manifest (the plan's settings), recovery
(startup repair, --fresh), worker (the loop), supervisor (the launcher's process manager), status (counts,
failures, ETA), ray_slots (the supervisor's slots as Ray actors on a cluster; imported only with --ray)."""
