"""Invoices: issuing (one, a batch, a CSV file), reading, voiding, and the cases a seller opens about one."""
