"""The QUANTA job worker (Celery): the task (`worker.tasks`) and what runs a job.

`worker.runner` claims a job and runs the library (TensorFlow is imported when a job
starts, never at import); `worker.hooks`, `worker.study_end`, `worker.results` and
`worker.job_plots` report its events, end studies and draw plots, given a
`worker.context.JobContext`. The API never imports this package: it sends tasks by
name through `quanta_jobs.queue`.
"""
