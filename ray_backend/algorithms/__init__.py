"""Built-in algorithms (imported by name through ray_backend.algorithm.resolve)."""
