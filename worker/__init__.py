"""The QUANTA job worker (Celery).

Only `quanta_jobs.queue` is imported by the API (to send tasks by name); it must
stay free of TensorFlow. `worker.tasks`, `worker.runner` and `worker.main` are
imported by the worker process alone.
"""
