"""pixpref.data."""
