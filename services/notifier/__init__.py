"""The notifier: tells tenants about stuck, rejected, recovered and orphan invoices, by signed webhook and by
e-mail, once per transition, grouped into digests, with a persisted retry schedule."""
