"""pixpref.personalize."""
