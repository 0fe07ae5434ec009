"""Pipeline toolkit: confidence gates and escalation tiers on top of the engine."""
