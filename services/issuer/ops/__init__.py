"""What operators see: the issuer's figures and look-ups across tenants, and the pipeline's dashboard."""
