"""The router: its pure core, the complexity tiers and their scorer, the router actor, the savings benchmark behind the tier model."""
