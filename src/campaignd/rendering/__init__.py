"""Rendering templates in worker processes, bounded in time and memory: `pool.RenderPool` is the
daemon's `Renderer`, `worker` the program each worker process runs."""
