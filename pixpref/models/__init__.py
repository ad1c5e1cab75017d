"""pixpref.models."""
