"""The breaker: its pure state machine, the actor, and failing providers end to end."""
