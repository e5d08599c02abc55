"""Workers: engines, the engine pool, job execution, heartbeats and the reaper."""
