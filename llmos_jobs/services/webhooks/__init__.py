"""Webhook callbacks: signed HTTP POSTs to a tenant's endpoint when something it asked
for is done.

Modules: ``ssrf`` (which destinations are allowed), ``signing`` (tenant secrets and
Standard Webhooks headers), ``events`` (raising an event), ``delivery`` (one attempt and
the retry schedule); the Celery task ``llmos.webhooks.deliver`` (workers/tasks.py) is a
thin wrapper around ``delivery.attempt_delivery`` on the ``webhooks`` queue.

Raising an event, for any feature (jobs use it; batches will)::

    from llmos_jobs.services.webhooks.events import emit

    delivery_id = emit(
        session=session,          # the SQLModel session whose transaction records the
                                  # outcome; the event is enqueued after it commits and
                                  # dropped if it rolls back
        tenant="acme",            # signs with this tenant's secret; scopes the listing
        event_type="batch.completed",   # "<resource>.<what happened>"
        url="https://example.com/hook", # checked against SSRF before every attempt;
                                  # check it at submission too (ssrf.check_destination)
        data={"id": batch_id, "status": "completed"},   # JSON-serialisable
        settings=settings,        # the Settings naming the broker
        job_id=None,              # optional: links the delivery to a job
    )

The body sent is ``{"type": event_type, "timestamp": ISO 8601, "data": data}``; the
`webhook-id` header is ``delivery_id``, the same on every attempt.

Job events (``job.succeeded``, ``job.failed``, ``job.cancelled``, ``job.filtered``,
``job.expired``) carry the job's id, status, kind, model, priority, result (the output),
usage, error, the content filter rules that ended or redacted it, its deadline,
attempts and timings, but not its
prompt: the receiver is the tenant's own endpoint."""
