"""The file-backed job queue (Maildir-style; see docs/QUEUE.md): a job is one JSON file, the folder holding
it is its state, and every state change is one rename. Modules: layout (paths), jobs (the record),
queue (enqueue/claim/complete/fail/reclaim), lease (worker identity and heartbeat), crash (test crash
points), worker (the loop), planner (dataset -> jobs, startup recovery), supervisor (the launcher's
process manager), status (counts, failures, ETA)."""
