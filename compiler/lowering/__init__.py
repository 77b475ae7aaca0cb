"""Target-independent Relax rewrites run before a target's pipeline (see `Target.prepare`)."""
