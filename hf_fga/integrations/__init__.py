"""Adapters to other libraries (optional extras): `hf_fga.integrations.quantus`."""
