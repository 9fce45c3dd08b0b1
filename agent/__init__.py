"""GT-Vision agent: records a city's cameras, reads plates, buffers in SQLite, syncs to central."""
