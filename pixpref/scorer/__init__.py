"""pixpref.scorer."""
