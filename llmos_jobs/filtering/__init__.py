"""The content filters of a tenant's language jobs, as plain functions on text:
normalisation (``normalise``), the built-in PII redaction rules (``pii``, regular
expressions kept as data in ``pii_rules.json``) and the compiled rules of a tenant
(``rules``). Where they run, and what a blocked job becomes, is
``llmos_jobs.services.filters`` and ``workers.filtering``."""
