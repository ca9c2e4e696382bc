"""The search: sample a pool, score it in worker processes (screened or not), pick, and keep candidates.csv."""
