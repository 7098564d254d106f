"""The event log (a transactional outbox) and the live change stream (``GET /events``)."""
