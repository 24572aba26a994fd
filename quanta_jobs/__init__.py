"""The job core of the QUANTA service, shared by the API (`api`) and the workers (`worker`).

It holds everything about jobs that is neither HTTP nor training: the settings, the
database (engine, models, migrations), the job state machine, reads and writes,
the event log, spec references, recovery and the sweeper, studies, the artifact
index, tokens and the queue (the Celery app and `enqueue`). It imports neither
FastAPI nor TensorFlow nor `quanta`: `api -> quanta_jobs <- worker`, and
`quanta_jobs -> quanta_spec`. See docs/architecture.md.
"""
