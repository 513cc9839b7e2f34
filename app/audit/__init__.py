"""The PHI-free audit trail: one :class:`~app.audit.record.AuditRecord` per prediction request, never a feature.

- :mod:`app.audit.record`: the record (identifiers, counts, timings; no patient data by construction).
- :mod:`app.audit.store`: :class:`~app.audit.store.AuditStore` over SQLAlchemy Core (SQLite or PostgreSQL),
  its schema versioned by :mod:`app.audit.migrations`.
- :mod:`app.audit.writer`: :class:`~app.audit.writer.AuditWriter`, a bounded queue drained off the request path.
- :mod:`app.audit.export` and :mod:`app.audit.command`: CSV export and the ``sbnn audit`` commands.

Nothing is imported here: the store needs the optional ``audit`` extra (SQLAlchemy, psycopg), and the serving
install must import this package without it.
"""
