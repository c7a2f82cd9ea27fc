"""Security signals: events from the IdP, EDR and MDM (Shared Signals, CAEP, RISC) acted on at once."""
