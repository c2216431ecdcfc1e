"""Keys, the signed trust store, and signing/verifying with model_signing."""
