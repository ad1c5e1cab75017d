"""The toy world: a procedural image world with synthetic users whose preferences are computable from
pixels. It is pixpref's embedded default and the ground truth for every quality claim."""
