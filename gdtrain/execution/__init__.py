"""Many points of a sweep or study: tasks, units, grouping, worker processes, executors, the sweep itself."""
