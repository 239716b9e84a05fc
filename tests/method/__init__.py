"""Tests of the NAtS method core (nats_model.mask, scorer, attention)."""
